"""Shared fixtures (one tiny model and one small synthetic dataset per test session, built locally, and one local
Ray per module) and the helpers tests use to start their own Ray head node and CLI processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's start-up on a loaded machine (issue 26): Ray's own wait for its GCS server to come up, and then for each
# process to connect to it (ray/_private/node.py: 30 s and 20 tries by default), is made longer for every Ray the
# tests start; its wait for the node to register (30 s) is fixed there, so a start that times out on it is tried
# once more (`start_ray`).
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
RAY_START_TIMED_OUT = "The current node timed out during startup"
# A port picked free and taken by another process before `ray start` bound it: tried once more on fresh ports.
RAY_PORT_TAKEN = ("that is used by other components", "Address already in use")

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def vllm_unavailable() -> str | None:
    """Why vLLM cannot start an engine in this environment, or None when it can (its CPU build, or a GPU)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed in this environment; `make test-vllm` runs these tests in .venv-vllm"
    from vllm.platforms import current_platform

    if current_platform.is_cpu() or current_platform.is_cuda_alike():
        return None
    return "this vllm build is a GPU build and finds no GPU here; the CPU build is in .venv-vllm (make test-vllm)"


def pytest_collection_modifyitems(config, items):
    vllm_items = [item for item in items if "vllm" in item.keywords]
    reason = vllm_unavailable() if vllm_items else None
    for item in vllm_items if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (tensor parallelism over NCCL); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from r3v_ray.models.tiny import build_tiny_model
    from r3v_ray.pipeline.prepare import tokenizer_corpus

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus=tokenizer_corpus()))


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    from r3v_ray.tasks import get_task

    out = tmp_path_factory.mktemp("synthetic-data")
    get_task("synthetic").write_dataset(out, num_train=24, num_test=12, seed=0)
    return str(out)


def tiny_run_config(path: Path, name: str, root: str, model: str, data: str, cache: Path, rounds: int = 1) -> Path:
    """A run small enough for 2 cores: 8 train / 4 test questions, short generations, one sampler, one worker.
    Sampling goes in batches of 2, so that a sampler killed while it works (tests/test_integrity.py) has a batch
    in flight."""
    import yaml

    cfg = {
        "name": name, "rounds": rounds,
        "model": {"path": model},
        "task": {"name": "synthetic", "data_dir": data, "max_train": 8, "max_test": 4},
        "sampling": {"num_samples": 2, "max_new_tokens": 16, "batch_size": 2},
        "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
        "evaluation": {"n": 2, "max_new_tokens": 16, "zero_shot": False},
        "resources": {"num_samplers": 1, "num_train_workers": 1},
        "storage": {"root": root, "cache_dir": str(cache)},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_two_round_run(tmp_path_factory, tiny_model_dir, synthetic_data_dir) -> dict:
    """One undisturbed run of `tiny_run_config` (rounds 0 and 1) on a local disk, by jobs/selftrain.py in a fresh
    local Ray, shared by the slow tests that compare other runs with it: {"name", "config", "run", "cache",
    "seconds"}. Read it only (copy it to change it)."""
    base = tmp_path_factory.mktemp("tiny-two-round")
    name = "tiny2"
    config = tiny_run_config(base / "run.yaml", name, str(base / "runs"), tiny_model_dir, synthetic_data_dir,
                             base / "cache")
    started = time.time()
    done = subprocess.run([PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {"name": name, "config": config, "run": base / "runs" / name, "cache": base / "cache",
            "seconds": round(time.time() - started, 1)}


T = TypeVar("T")


def start_ray(start: Callable[[], T]) -> T:
    """`start()` (a start of Ray), tried once more where Ray gave up waiting for its node to register (a loaded
    machine) or found a port taken, after ending the processes the first try left: what `start` started and did not
    end itself."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        return start()
    except Exception as e:
        if not any(m in str(e) for m in (RAY_START_TIMED_OUT, *RAY_PORT_TAKEN)):
            raise
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in left:
        p.terminate()
    psutil.wait_procs(left, timeout=30)
    return start()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module (num_cpus=2), torn down by the module that started it."""
    import ray

    from r3v_ray.cluster.connect import start_local

    # always a fresh instance on 127.0.0.1, never a cluster someone else started with `ray start`
    start_ray(lambda: start_local(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False))
    yield ray
    ray.shutdown()


def forget_cluster_address(gcs_port: int) -> None:
    """Remove /tmp/ray/ray_current_cluster if it names the (now ended) cluster on `gcs_port`.

    `ray start` records its address there and only `ray stop` removes it; tests end their head node by signal, so
    they remove it themselves. Left behind, every later `address="auto"` lookup (Ray Train's placement-group
    cleaner does one in each local run) waits on the dead cluster and prints a timeout traceback.
    """
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            ours = f.read().strip().endswith(f":{gcs_port}")
        if ours:
            os.remove(path)
    except OSError:
        pass


@contextmanager
def s3_server(host: str = "127.0.0.1", bucket: str = "r3v") -> Iterator[dict]:
    """A real S3-compatible HTTP server (moto's standalone server) on `host`, a free port, with `bucket` made;
    yields the AWS_* variables that point pyarrow, boto3 and Ray workers at it. Stopped on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


S3_BUCKET = "r3v"


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server for one test module, with S3_BUCKET made: its AWS_* variables, also set in this
    process while the module runs."""
    with s3_server(bucket=S3_BUCKET) as env, environ(**env):
        yield env


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """os.environ with `values` set, restored on exit (for a local Ray started inside, which its workers inherit)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1", avoid: tuple[int, ...] = ()) -> list[int]:
    """`n` distinct free ports, none in `avoid`. Every socket stays bound until all are chosen: a port closed at once
    can be handed out again by the next bind (two of a head's components then got one port, and `ray start` refused
    it: "is trying to use a port number ... that is used by other components")."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)  # an avoided port stays bound too, so the next bind cannot return it
            s.bind((host, 0))
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in held:
            s.close()


def subprocess_env(**extra: str) -> dict:
    """Environment for the CLI and Ray processes tests start: offline, DeepSpeed on CPU, this venv's `ray` on PATH,
    the repo importable, and no RAY_ADDRESS inherited from the test process."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT),
               PATH=f"{Path(PY).parent}:{env.get('PATH', '')}", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


HEAD_PORTS = ("gcs", "dashboard", "metrics", "agent", "agent_grpc", "runtime_env", "node_manager", "object_manager")


@contextmanager
def ray_head(log_path: Path, env: dict, ready: Callable[[dict], object], *args: str, gcs_port: int | None = None,
             timeout_s: float = 180, node_ip: str = "127.0.0.1") -> Iterator[dict]:
    """A `ray start --head --block` on 127.0.0.1 (or `node_ip`, an address of the test's own) owned by the caller;
    yields its ports.

    Every port is free and explicit (Ray's fixed defaults, e.g. the agent's 52365, collide with any other cluster on
    the machine). On 127.0.0.1 the node registers under 127.0.0.1 only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray
    2.60 swaps it for the machine's network address otherwise; see r3v_ray/cluster/connect.py); that is set in `env`
    itself unless `env` sets it: drivers the caller starts with `env` need it too, or Ray swaps the 127.0.0.1 of
    the head's address for the network address, where the head does not listen. Another `node_ip` (a network
    namespace's address) keeps Ray's multi-node default, which worker nodes need to join. Up means `ready(ports)`
    returned without raising. The head gets a temp dir of its own unless `args` names one: a job's driver finds its
    cluster through `<temp dir>/ray_current_cluster`, and in the shared /tmp/ray any later `ray start` on the
    machine overwrites that file, sending the next job to another cluster. On exit the head's whole process group
    (raylet, dashboard, autoscaler and any nodes it started) is ended, and its recorded address forgotten.
    """
    if node_ip == "127.0.0.1":
        env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    own_temp = None
    if not any(a.startswith("--temp-dir") for a in args):
        own_temp = tempfile.mkdtemp(prefix="r3v-head-", dir="/tmp")  # short: Ray's socket paths stay < 108 chars
        args = (*args, f"--temp-dir={own_temp}")
    log = open(log_path, "w")  # a second try (start_ray) writes after the first one's output

    def start() -> tuple[subprocess.Popen, dict]:
        names = [n for n in HEAD_PORTS if not (gcs_port and n == "gcs")]
        ports = dict(zip(names, free_ports(len(names), avoid=(gcs_port,) if gcs_port else ())))
        ports |= {"gcs": gcs_port} if gcs_port else {}
        cmd = [str(Path(PY).parent / "ray"), "start", "--head", "--block", f"--node-ip-address={node_ip}",
               f"--port={ports['gcs']}", "--include-dashboard=true", f"--dashboard-host={node_ip}",
               f"--dashboard-port={ports['dashboard']}", f"--metrics-export-port={ports['metrics']}",
               f"--dashboard-agent-listen-port={ports['agent']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
               f"--runtime-env-agent-port={ports['runtime_env']}", f"--node-manager-port={ports['node_manager']}",
               f"--object-manager-port={ports['object_manager']}", "--disable-usage-stats", *args]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while True:
            try:
                ready(ports)
                return proc, ports
            except Exception:
                if proc.poll() is not None or time.time() >= deadline:
                    end_process_group(proc)
                    raise RuntimeError("the head node did not come up: " + Path(log_path).read_text()[-2000:])
                time.sleep(1)

    proc, ports = None, {}
    try:
        proc, ports = start_ray(start)
        yield ports
    finally:
        if proc:
            end_process_group(proc)
        log.close()
        if ports:
            forget_cluster_address(ports["gcs"])
        if own_temp:
            shutil.rmtree(own_temp, ignore_errors=True)


def run_in_terminal(cmd: list[str], env: dict, timeout_s: float, cols: int = 120, rows: int = 40,
                    cwd: Path = ROOT) -> tuple[int, bytes]:
    """Run `cmd` on a pseudo-terminal of `cols` x `rows` (as a user's shell would: progress bars draw, lines wrap),
    in a process group of its own; (exit status, everything it wrote). Ended, and a TimeoutError raised, after
    `timeout_s`."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "TERM": "xterm"}, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.time() + timeout_s
    try:
        while True:
            if time.time() > deadline:
                end_process_group(proc)
                raise TimeoutError(f"{cmd} ran over {timeout_s} s; its output ended with {bytes(out[-3000:])!r}")
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    return proc.wait(timeout=60), bytes(out)


def terminal_lines(output: bytes, cols: int = 120, rows: int = 40) -> list[str]:
    """The lines a terminal of `cols` columns shows for `output`, scrolled-off ones included (a real terminal
    emulator, pyte: carriage returns and cursor moves of progress bars overwrite, long lines wrap)."""
    import pyte

    screen = pyte.HistoryScreen(cols, rows, history=1_000_000, ratio=0.5)
    pyte.ByteStream(screen).feed(output)
    lines = ["".join(line[x].data for x in range(cols)).rstrip() for line in screen.history.top]
    lines += [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def tensorboard_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the TensorBoard event files in a directory, read with tensorboard's own reader
    (which drops what a later file's purge step withdraws)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def end_process_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM the process group a test started (start_new_session=True), SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group has exited already (the test's own assertion says why)
        proc.wait()
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
