"""A real two-node Ray cluster on one machine whose worker node shares no disk with the driver.

The head (no CPUs, so every sampler actor and train worker lands on the worker node) and the driver run here; the
worker node runs in a network namespace of its own, joined to this one by a veth pair with addresses of the test's
own making (so nothing listens on the machine's network address), and in a mount namespace of its own with a
fresh tmpfs over /tmp: it cannot see the driver's run directory, model or data (all under /tmp/pytest-of-*). It does
see the repository and its virtualenv, where the package is installed, as every node of a real cluster has it. The S3 server listens
on the head's veth address, where both nodes reach it. Each node is started with --node-ip-address on its own
veth address, and Ray registers it there (the test checks the worker's), not under the machine's address.

1. A round with storage.root, model.path and task.data_dir on the S3 server succeeds, all compute on the worker.
2. The same round with a local storage.root fails at its start, saying the workers cannot see it.

The namespaces need root (`ip netns`, `unshare --mount`); where they cannot be made the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from conftest import PY, ROOT, end_process_group, environ, ray_head, s3_server, subprocess_env

from r3v_ray.run import store
from r3v_ray.run.layout import RunDir

pytestmark = pytest.mark.slow

RAY = str(Path(PY).parent / "ray")
OBJECT_STORE = str(300 * 1024 * 1024)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def isolation_unavailable() -> str | None:
    """Why the worker node's namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network and mount namespaces (ip netns, unshare --mount) need root; this test runs as a normal user"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux / iproute2), so the worker node cannot be isolated"
    probe = _run("unshare", "--mount", "--propagation", "private", "true")
    if probe.returncode != 0:
        return f"`unshare --mount` fails here: {probe.stderr.strip()}"
    name = f"r3v-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", name)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _run("ip", "netns", "del", name)
    return None


@contextmanager
def worker_namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, head address, worker address): a network namespace joined to this one by a veth pair on a /30
    of 10.251.0.0/16 that no interface here uses. Every process left in it, the pair and the namespace go on exit."""
    used = _run("ip", "-o", "addr").stdout
    subnet = next(n for n in random.sample(range(256), 256) if f"10.251.{n}." not in used)
    host_ip, worker_ip = f"10.251.{subnet}.1", f"10.251.{subnet}.2"
    tag = f"{os.getpid() % 100000}"
    ns, host_if, worker_if = f"r3v-w{tag}", f"r3vh{tag}", f"r3vw{tag}"
    steps = [("ip", "netns", "add", ns), ("ip", "link", "add", host_if, "type", "veth", "peer", "name", worker_if),
             ("ip", "link", "set", worker_if, "netns", ns), ("ip", "addr", "add", f"{host_ip}/30", "dev", host_if),
             ("ip", "link", "set", host_if, "up"),
             ("ip", "netns", "exec", ns, "ip", "addr", "add", f"{worker_ip}/30", "dev", worker_if),
             ("ip", "netns", "exec", ns, "ip", "link", "set", worker_if, "up"),
             ("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")]
    try:
        for step in steps:
            done = _run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield ns, host_ip, worker_ip
    finally:
        for pid in _run("ip", "netns", "pids", ns).stdout.split():  # only processes in our own namespace
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        _run("ip", "link", "del", host_if)  # removes both ends
        _run("ip", "netns", "del", ns)


def _alive_nodes(dashboard: str) -> list[dict]:
    url = f"{dashboard}/api/v0/nodes?limit=10&detail=true"
    nodes = json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


@contextmanager
def worker_node(ns: str, head: str, worker_ip: str, env: dict, dashboard: str, log_path: Path,
                hide: Path) -> Iterator[str]:
    """`ray start` (2 CPUs) in namespace `ns`, under a fresh tmpfs at /tmp (and at `hide`, the tests' base temp
    directory, where that is elsewhere), with the repository still in place; yields its node id once it has
    joined. Its own network namespace gives it ports of its own, so Ray's defaults cannot collide with anyone's."""
    mounts = ["/tmp"] + ([] if str(hide).startswith("/tmp/") else [str(hide)])
    script = [f"mount -t tmpfs -o size=8g r3v-worker-tmp {m}" for m in mounts]
    if any(Path(m) in ROOT.parents for m in mounts):
        # A checkout under a hidden directory (a clone in /tmp) is bound back in place over the fresh tmpfs, through
        # a stage of the namespace's own: the node sees the repository and its venv, still none of the driver's files.
        stage = "/mnt/r3v-repo"
        script = (["mount -t tmpfs r3v-stage /mnt", f"mkdir {stage}", f"mount --bind {ROOT} {stage}"] + script
                  + [f"mkdir -p {ROOT}", f"mount --bind {stage} {ROOT}"])
    script = " && ".join(script)
    script += (f" && exec {RAY} start --address={head} "
              f"--node-ip-address={worker_ip} --num-cpus=2 --object-store-memory={OBJECT_STORE} "
              "--temp-dir=/tmp/ray --disable-usage-stats --block")
    log = open(log_path, "w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                             "bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            workers = [n for n in _alive_nodes(dashboard) if not n["is_head_node"]]
            if workers:
                assert workers[0]["node_ip"] == worker_ip, workers
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the worker node did not join"
            time.sleep(1)
        yield workers[0]["node_id"]
    finally:
        end_process_group(proc)
        log.close()


def round_config(path: Path, root: str, bucket: str, cache: Path) -> Path:
    cfg = {
        "name": "twonode", "rounds": 0,
        # The tiny model and the task data are built by the driver and published to the bucket, so that the worker
        # node (which sees none of the driver's files) reads them from there into its own cache.
        "model": {"path": f"s3://{bucket}/inputs/tiny-model", "tiny": {}},
        "task": {"name": "synthetic", "data_dir": f"s3://{bucket}/inputs/synthetic", "num_train": 8, "num_test": 4},
        "sampling": {"num_samples": 2, "max_new_tokens": 16, "batch_size": 8},
        "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
        "evaluation": {"n": 2, "max_new_tokens": 16, "zero_shot": False, "select": False},
        "resources": {"num_samplers": 1, "num_train_workers": 1},
        "storage": {"root": root, "cache_dir": str(cache)},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _actors(dashboard: str) -> list[dict]:
    url = f"{dashboard}/api/v0/actors?limit=1000&detail=true"
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]["result"]


def test_round_on_a_worker_that_shares_no_disk_needs_storage_every_node_reaches(tmp_path, tmp_path_factory):
    reason = isolation_unavailable()
    if reason:
        pytest.skip(f"cannot isolate a worker node here: {reason}")
    bucket = "r3v"
    with worker_namespace() as (ns, host_ip, worker_ip), s3_server(host=host_ip, bucket=bucket) as s3env:
        env = subprocess_env(RAY_AUTH_MODE="disabled", **s3env)

        def ready(ports: dict) -> None:
            _alive_nodes(f"http://{host_ip}:{ports['dashboard']}")

        with ray_head(tmp_path / "head.log", env, ready, "--num-cpus=0", f"--object-store-memory={OBJECT_STORE}",
                      node_ip=host_ip) as ports:
            dashboard = f"http://{host_ip}:{ports['dashboard']}"
            with worker_node(ns, f"{host_ip}:{ports['gcs']}", worker_ip, env, dashboard,
                             tmp_path / "worker.log", tmp_path_factory.getbasetemp()) as worker_id:
                driver_env = env | {"RAY_ADDRESS": f"{host_ip}:{ports['gcs']}"}
                # The isolation is real: the worker node does not see this test's directory.
                seen = subprocess.run([PY, "-c", (
                    "import ray, os; from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as N; "
                    "ray.init(); f = ray.remote(num_cpus=0)(lambda p: os.path.exists(p)); "
                    f"print('SEES', ray.get(f.options(scheduling_strategy=N('{worker_id}', soft=False)).remote("
                    f"'{tmp_path}')))")], env=driver_env, capture_output=True, text=True, timeout=300)
                assert "SEES False" in seen.stdout, seen.stdout[-2000:] + seen.stderr[-2000:]

                # 1. Storage on the S3 server: the round succeeds with every actor on the worker node.
                config = round_config(tmp_path / "s3.yaml", f"s3://{bucket}/runs", bucket, tmp_path / "cache")
                started = time.time()
                done = subprocess.run([PY, str(ROOT / "jobs" / "round.py"), "--config", str(config), "--round", "0"],
                                      cwd=ROOT, env=driver_env, capture_output=True, text=True, timeout=1500)
                s3_seconds = time.time() - started
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
                assert "storage probe: 1 other node(s) see s3://r3v/runs/twonode" in done.stderr
                with environ(**s3env):
                    eval0 = store.read_json(RunDir(f"s3://{bucket}/runs/twonode").round(0).eval_json)
                assert eval0["num_questions"] == 4 and "test@1" in eval0
                ours = [a for a in _actors(dashboard) if "EngineActor" in a["class_name"]
                        or a["class_name"] == "RayTrainWorker"]
                assert {a["class_name"].split("(")[0] for a in ours} >= {"MapWorker", "RayTrainWorker"}, ours
                assert all(a["node_id"] == worker_id for a in ours), [(a["class_name"], a["node_id"]) for a in ours]
                assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("checkpoint-*"))

                # 2. The same round with storage.root on this machine's disk: refused at the start, before any
                # sampler or train worker, naming the setting and saying the workers cannot see it.
                before = len(_actors(dashboard))
                config = round_config(tmp_path / "local.yaml", str(tmp_path / "runs"), bucket, tmp_path / "cache")
                started = time.time()
                failed = subprocess.run([PY, str(ROOT / "jobs" / "round.py"), "--config", str(config), "--round", "0"],
                                        cwd=ROOT, env=driver_env, capture_output=True, text=True, timeout=600)
                local_seconds = time.time() - started
                assert failed.returncode == 2, failed.stdout[-3000:] + failed.stderr[-3000:]
                message = failed.stderr
                assert f"storage.root: {tmp_path}/runs/twonode/config.yaml does not exist there" in message, message
                assert "storage.root is on this machine's disk, which the workers cannot see" in message, message
                assert len(_actors(dashboard)) == before  # no actor was started for it
    print(json.dumps({"s3_round_seconds": round(s3_seconds, 1), "local_root_failed_after_s": round(local_seconds, 1)}))
