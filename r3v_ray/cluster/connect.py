"""Connecting to Ray the way r3v's entrypoints expect: the one place that decides which Ray a command uses.

A bare `ray.init()` joins whatever cluster /tmp/ray/ray_current_cluster last recorded, even one that has since
been stopped (it then hangs retrying), or someone else's on a shared machine. So: an explicit address (a CLI's
--address), else RAY_ADDRESS (set by Ray inside a submitted job, or by the user), else a fresh local Ray.

A fresh local Ray registers its node under 127.0.0.1. Ray 2.60 on Linux otherwise registers it under the
machine's network address, even when asked for 127.0.0.1 (`ray.init(_node_ip_address="127.0.0.1")` swaps a
loopback address for the network one), unless Ray's switch for single-machine clusters
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is off; Ray reads that switch once, when it is imported, so
`start_local` turns it off for the start of the local instance only (tests/test_loopback.py checks the
address of every way r3v starts Ray).

The processes of a local Ray also learn its dashboard's address. Ray Train's helper actors (the placement-group
cleaner, the state actor of the dashboard's Train view) ask Ray's state API whether the training's controller is
alive, and without an address that API looks for "the" Ray of the machine: on a machine with a second Ray instance it
fails ("Found multiple active Ray instances", a traceback in the run's output) or asks the cluster last recorded by a
`ray start`, not this one. A driver joining an existing cluster (a submitted job's, or one given --address) sends
that address, and r3v's worker variables (r3v_ray/observe/console.py), in its job's runtime env: the cluster's worker
processes were started by `ray start`, not by this driver, and inherit nothing from it.

A cluster has two addresses a user meets: the dashboard's URL (http://HOST:8265, what `ray job submit` takes) and
the GCS address HOST:PORT (what `ray start --head` prints, and RAY_ADDRESS inside a job). Every r3v command takes
either; `cluster_address` turns one into the other.
"""

from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from typing import Iterator

LOOPBACK = "127.0.0.1"
ADDRESS_HELP = ("the Ray cluster: its dashboard URL (http://HOST:8265) or its GCS address (HOST:6379, what `ray start "
                "--head` prints); either works")
# Ray's switch: "0" makes every node address 127.0.0.1 (and refuses worker nodes joining over the network).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Where Ray's state API (ray.util.state) finds the dashboard when it is given no address.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
DEFAULT_DASHBOARD_PORT = 8265
# Ray ends idle worker processes beyond its soft limit (by default the CPU count) after a second. A sampling pass's
# engine actors fill that limit, so the task writing the pass's output started a new Python process every pass, 2 s
# on 2 cores (benchmarks/round.py); a local Ray keeps this many more (each idle one holds ~100-300 MB), and a pass
# reuses the last one's writer.
SPARE_IDLE_WORKERS = 4


def ensure_ray(address: str | None = None, **kwargs) -> None:
    """Connect this process to Ray once: `address` (a dashboard URL or a GCS address), else RAY_ADDRESS, else a
    fresh local Ray on 127.0.0.1.

    `kwargs` go to ray.init (e.g. num_cpus for a local instance, log_to_driver, job_config); the job's runtime env
    gets r3v's worker set-up hook (r3v_ray/observe/console.py)."""
    import ray

    if ray.is_initialized():
        return
    from r3v_ray.observe.console import WORKER_SETUP_HOOK

    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env.setdefault("worker_process_setup_hook", WORKER_SETUP_HOOK)  # quiet workers (r3v_ray/observe/console.py)
    kwargs["runtime_env"] = runtime_env
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        start_local(**kwargs)
        return
    address = cluster_address(address, "gcs")
    env_vars = _cluster_worker_env(address)
    if env_vars:
        runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
    if _is_loopback(address):
        # A cluster on this machine's loopback (one started with the switch off): Ray would otherwise swap
        # 127.0.0.1 in the address for the network address, where that cluster does not listen.
        with _single_machine():
            ray.init(address=address, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def cluster_address(address: str, want: str) -> str:
    """`address` of a running cluster as `want` needs it: "dashboard" (http://HOST:PORT, for job submission and
    the state API) or "gcs" (HOST:PORT, for ray.init). Either form is accepted: the dashboard's URL is asked for
    its head node's GCS address, the GCS for its dashboard's URL. An AddressError says what did not answer."""
    address = address.strip().rstrip("/")
    is_url = "://" in address
    if want == "dashboard":
        if is_url:
            return address
        try:
            return _dashboard_of_gcs(address)
        except Exception as exc:
            raise AddressError(f"--address {address}: no Ray cluster's GCS answers there to name its dashboard "
                               f"({type(exc).__name__}: {exc}). Give the dashboard URL (http://HOST:8265) or the "
                               "address `ray start --head` printed (HOST:6379)") from None
    if want != "gcs":
        raise ValueError(f"want must be 'dashboard' or 'gcs', not {want!r}")
    if address.startswith("ray://") or not is_url:
        return address
    return _gcs_of_dashboard(address)


class AddressError(ValueError):
    """A cluster address that does not lead to a running cluster; the message names it."""


def _gcs_of_dashboard(url: str) -> str:
    """The GCS address of the cluster whose dashboard is at `url`: the head node's raylet is started with it
    (`--gcs-address=HOST:PORT`), and the dashboard's node summary lists the raylet's command line."""
    import urllib.request

    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    request = urllib.request.Request(f"{url}/nodes?view=summary", headers=get_auth_headers_if_auth_enabled({}))
    try:
        summary = json.loads(urllib.request.urlopen(request, timeout=30).read())["data"]["summary"]
    except Exception as exc:
        raise AddressError(f"--address {url}: no Ray dashboard answers there ({type(exc).__name__}: {exc}). Give "
                           "the dashboard URL (http://HOST:8265) or the address `ray start --head` printed "
                           "(HOST:6379)") from None
    for node in summary:
        if node.get("raylet", {}).get("isHeadNode"):
            for arg in node.get("cmdline") or []:
                if found := re.fullmatch(r"--gcs-address=(\S+)", arg):
                    return found.group(1)
    raise AddressError(f"--address {url}: the dashboard does not say where its cluster's GCS is (no head node in "
                       "its node summary yet); give the address `ray start --head` printed (HOST:6379)")


def _dashboard_of_gcs(address: str) -> str:
    """The dashboard URL the cluster's GCS holds (the dashboard writes it there when it starts): one lookup, not
    Ray's own helper, which retries for 40 s on a cluster without a dashboard."""
    from ray._private import ray_constants, services
    from ray._raylet import GcsClient

    with _single_machine() if _is_loopback(address) else _nothing():
        address = services.canonicalize_bootstrap_address_or_die(address)
    value = GcsClient(address=address).internal_kv_get(
        ray_constants.DASHBOARD_ADDRESS.encode(), ray_constants.KV_NAMESPACE_DASHBOARD, timeout=30)
    if not value:
        raise LookupError("the cluster has no dashboard")
    return f"http://{value.decode()}"


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _cluster_worker_env(gcs: str) -> dict[str, str]:
    """Variables for the workers of a driver joining the cluster at `gcs`: r3v's worker variables
    (r3v_ray/observe/console.py: quiet loading bars, Ray Train's settings) and the dashboard's address for the state API
    (Ray Train's helper actors, see above), except those the job's own runtime env sets (Ray refuses a driver
    runtime env that repeats a job's variable)."""
    from r3v_ray.observe.console import WORKER_ENV

    env = {k: os.environ[k] for k in (*WORKER_ENV, API_SERVER_ENV) if k in os.environ}
    if API_SERVER_ENV not in env:
        try:
            env[API_SERVER_ENV] = os.environ[API_SERVER_ENV] = cluster_address(gcs, "dashboard")
        except AddressError:
            pass  # a cluster without a dashboard: the state API has nothing to ask either
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    return {k: v for k, v in env.items() if k not in taken}


def start_local(**kwargs) -> None:
    """A fresh local Ray instance (never an existing cluster) with every node address on 127.0.0.1."""
    import ray

    system_config = dict(kwargs.pop("_system_config", None) or {})
    if "RAY_num_workers_soft_limit" not in os.environ:  # Ray's own variable for it stays the user's to set
        cpus = kwargs.get("num_cpus")
        if cpus is None:
            from ray._private.utils import get_num_cpus  # what Ray will count (a container's CPU limit)

            cpus = get_num_cpus()
        system_config.setdefault("num_workers_soft_limit", int(cpus) + SPARE_IDLE_WORKERS)
    with _single_machine(), _dashboard_known(kwargs):
        ray.init(address="local", _system_config=system_config, **kwargs)


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in (LOOPBACK, "localhost", "::1")


@contextmanager
def _dashboard_known(kwargs: dict) -> Iterator[None]:
    """The local instance's dashboard on a port chosen here (the caller's, else 8265 when free, else a free one),
    and its address in the environment the instance's processes inherit while it starts; restored afterwards."""
    if kwargs.get("include_dashboard") is False:
        yield
        return
    port = kwargs.get("dashboard_port") or _free_port(DEFAULT_DASHBOARD_PORT)
    kwargs["dashboard_port"] = port
    saved = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = f"http://{LOOPBACK}:{port}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = saved


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine switch off while the local instance starts: the driver picks the node address from
    Ray's constant (read at import), and the processes started meanwhile (GCS, raylet and through it every worker,
    dashboard) inherit the environment variable. Both are restored afterwards, so a later connection to a real
    cluster from this process, or a `ray start` it runs, is unaffected."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env
