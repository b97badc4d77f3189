"""Local Ray stays on loopback: each way r3v (and its tests) starts Ray registers the node under 127.0.0.1.

Ray 2.60 on Linux registers a local node under the machine's network address unless its single-machine switch
is off (r3v_ray/cluster/connect.py). The ways: `ensure_ray`/`start_local` (every command, the demo, the benchmarks,
conftest's `ray_local`; `r3v serve` is checked in tests/test_serving.py) and conftest's `ray start --head`; and
`ensure_ray` with an address joins that cluster instead of starting one.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from conftest import PY, ROOT, ray_head, subprocess_env

PROBE = """
import json, os, sys, ray
from ray._private import ray_constants
from r3v_ray.cluster.connect import SINGLE_MACHINE_ENV, ensure_ray
before = ray_constants.ENABLE_RAY_CLUSTER
ensure_ray(sys.argv[1] if len(sys.argv) > 1 else None, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()

print(json.dumps({
    "nodes": [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]],
    "gcs": ray.get_runtime_context().gcs_address,
    "task_ip": ray.get(where.remote()),
    "cpus": ray.cluster_resources().get("CPU", 0),
    "flag_restored": ray_constants.ENABLE_RAY_CLUSTER == before,
    "env_restored": os.environ.get(SINGLE_MACHINE_ENV) is None,
}))
ray.shutdown()
"""


def _probe(*args: str, **env: str) -> dict:
    done = subprocess.run([PY, "-c", PROBE, *args], cwd=ROOT, env=subprocess_env() | env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ensure_ray_starts_a_fresh_local_ray_on_loopback():
    got = _probe()
    assert got["nodes"] == ["127.0.0.1"] and got["gcs"].startswith("127.0.0.1:") and got["task_ip"] == "127.0.0.1"
    # Ray's switch is back as it was in the driver, so a later connection to a real cluster is unaffected.
    assert got["flag_restored"] and got["env_restored"]


@pytest.mark.slow
def test_head_node_is_on_loopback_and_ensure_ray_joins_it_by_address(tmp_path):
    def nodes(ports: dict) -> list[dict]:
        url = f"http://127.0.0.1:{ports['dashboard']}/api/v0/nodes?limit=10"
        return json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]["result"]

    def registered(ports: dict) -> None:
        assert nodes(ports), "the dashboard answers before the node is registered"

    env = subprocess_env(RAY_AUTH_MODE="disabled")
    with ray_head(tmp_path / "head.log", env, registered, "--num-cpus=0") as ports:
        assert [n["node_ip"] for n in nodes(ports)] == ["127.0.0.1"]
        # An address (a CLI's --address, or RAY_ADDRESS) is joined, not replaced by a fresh local Ray: the CPU-less
        # head is the whole cluster the driver sees.
        for joined in (_probe(f"127.0.0.1:{ports['gcs']}", RAY_AUTH_MODE="disabled"),
                       _probe(RAY_ADDRESS=f"127.0.0.1:{ports['gcs']}", RAY_AUTH_MODE="disabled")):
            assert joined["nodes"] == ["127.0.0.1"] and joined["cpus"] == 0
            assert joined["gcs"] == f"127.0.0.1:{ports['gcs']}"
