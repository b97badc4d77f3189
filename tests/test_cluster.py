"""From one machine to a cluster: cluster.yaml against Ray's own validator, `r3v plan`, and a round on a local
simulated autoscaling cluster whose worker nodes come and go with the stages."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import PY, ROOT, free_port, ray_head, subprocess_env

from r3v_ray.cli import main as r3v
from r3v_ray.config import load_config


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


# -- cluster.yaml ---------------------------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation(cluster_cfg):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before touching the cloud: merge the provider defaults, then validate.
    prepared = prepare_config(copy.deepcopy(cluster_cfg))
    validate_config(prepared)

    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {n: t for n, t in types.items() if n != prepared["head_node_type"]}
    assert {t["resources"]["GPU"] for t in workers.values()} == {1, 8}  # sampler and trainer types
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
    assert all(any(k.startswith("accelerator_type:") for k in t["resources"]) for t in workers.values())
    assert 0 < prepared["idle_timeout_minutes"] <= 30
    assert any('pip install -e ".[gpu]"' in c for c in prepared["setup_commands"])
    assert prepared["file_mounts"]["~/r3v-ray"] == "."
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-port=8265" in head_start and "--autoscaling-config" in head_start

    # The validator really checks: a typo in a node type is refused.
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["gpu-sampler"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


# -- r3v plan -------------------------------------------------------------------------------------------------


def _plan_json(capsys, *args) -> dict:
    assert r3v(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_demo_config(capsys):
    data = _plan_json(capsys, "--config", str(ROOT / "configs" / "demo.yaml"))
    stages = {s["stage"]: s for s in data["stages"]}
    assert list(stages)[:4] == ["sample", "build", "train", "eval"] and "serve" in stages
    assert stages["sample"]["units"] == 2 and stages["sample"]["per_unit"] == {"CPU": 1.0}
    assert stages["sample"]["rounds"] == "1..2" and stages["train"]["rounds"] == "0..2"
    assert stages["train"]["total"] == {"CPU": 2.0} and stages["build"]["total"] == {}
    assert stages["eval"]["per_unit"] == stages["sample"]["per_unit"]
    assert data["notes"] == []

    # Overrides flow through, and the text form starts nothing and names every stage.
    data = _plan_json(capsys, "--config", str(ROOT / "configs" / "demo.yaml"), "--set", "resources.num_samplers=5")
    assert data["stages"][0]["total"] == {"CPU": 5.0}
    assert r3v(["plan", "--config", str(ROOT / "configs" / "demo.yaml")]) == 0
    text = capsys.readouterr().out
    assert "nothing is started" in text and all(s in text for s in ("sample", "build", "train", "eval", "serve"))
    assert "peak of one round (stages run one at a time): CPU=2" in text

    # On cluster.yaml the CPU-only demo fits the head alone: no worker node is needed, so no note about choices.
    data = _plan_json(capsys, "--config", str(ROOT / "configs" / "demo.yaml"), "--cluster", str(ROOT / "cluster.yaml"))
    assert data["stages"][2]["nodes"]["head"] == 1 and data["notes"] == [] and data["peak_nodes"] == {}


def test_plan_gpu_config_on_cluster_yaml(capsys):
    data = _plan_json(capsys, "--config", str(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml"),
                      "--cluster", str(ROOT / "cluster.yaml"))
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["sample"]["per_unit"] == {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": 0.001}
    assert stages["sample"]["nodes"] == {"gpu-sampler": 8} and stages["eval"]["nodes"] == {"gpu-sampler": 8}
    assert stages["train"]["total"]["GPU"] == 8 and stages["train"]["nodes"] == {"gpu-trainer": 1}
    assert stages["serve"]["nodes"] == {"gpu-sampler": 1}
    assert data["peak_nodes"] == {"gpu-sampler": 8, "gpu-trainer": 1} and data["notes"] == []

    # Without the accelerator pins, samplers fit both GPU types: the plan says so rather than guessing.
    data = _plan_json(capsys, "--config", str(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml"),
                      "--cluster", str(ROOT / "cluster.yaml"), "--set", "resources.sampler_accelerator_type=null",
                      "--set", "resources.num_samplers=9")
    sample = data["stages"][0]
    assert sample["nodes"] == {"gpu-sampler": 9, "gpu-trainer": 2}
    assert any(n.startswith("sample: fits several worker types") for n in data["notes"])


def test_plan_names_what_to_fill_in_and_the_paths_every_node_must_see(capsys):
    gpu = ("--config", str(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml"))
    fill_in = _plan_json(capsys, *gpu, "--cluster", str(ROOT / "cluster.yaml"))["fill_in"]
    assert any(f.startswith("storage.root s3://my-bucket/r3v-runs is the example's placeholder bucket") for f in fill_in)
    assert any(f.startswith("task.data_dir /mnt/data/geoqa is a path on a disk: every node") for f in fill_in)
    for node_type in ("gpu-sampler", "gpu-trainer"):
        assert any(f.startswith(f"cluster node type {node_type}: no ImageId") for f in fill_in), fill_in
        assert any(f.startswith(f"cluster node type {node_type}: no IamInstanceProfile") for f in fill_in), fill_in
    assert not any("cluster node type head" in f for f in fill_in)
    assert r3v(["plan", *gpu]) == 0 and "fill in: storage.root s3://my-bucket" in capsys.readouterr().out

    # Filled in: a bucket of one's own, data on it, every worker type with an AMI and an instance profile.
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for name in ("gpu-sampler", "gpu-trainer"):
        cluster["available_node_types"][name]["node_config"].update(
            ImageId="ami-0123456789abcdef0", IamInstanceProfile={"Arn": "arn:aws:iam::1:instance-profile/r3v"})
    from r3v_ray.config import load_config
    from r3v_ray.cluster.plan import to_fill_in

    cfg = load_config(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml",
                      ["storage.root=s3://team-bucket/r3v", "task.data_dir=s3://team-bucket/geoqa"])
    assert to_fill_in(cfg, cluster) == []


def test_requests_from_config_are_accepted_by_ray():
    from ray.train import ScalingConfig

    from r3v_ray.cluster.resources import sampler_remote_args, scaling_config_kwargs, serve_actor_options

    cfg = load_config(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml")
    scaling = ScalingConfig(**scaling_config_kwargs(cfg))
    assert scaling.num_workers == 8 and scaling.use_gpu and scaling.accelerator_type == "A100"
    assert scaling.resources_per_worker == {"CPU": 8.0, "GPU": 1.0}
    assert sampler_remote_args(cfg) == {"num_cpus": 4.0, "num_gpus": 1.0, "accelerator_type": "A10G"}
    assert serve_actor_options(cfg)["accelerator_type"] == "A10G"

    demo = load_config(ROOT / "configs" / "demo.yaml")  # CPU defaults ask for nothing beyond CPUs
    assert sampler_remote_args(demo) == {"num_cpus": 1.0, "num_gpus": 0.0}
    kw = scaling_config_kwargs(demo)
    assert not kw["use_gpu"] and kw["resources_per_worker"] == {"CPU": 1.0} and "accelerator_type" not in kw


# -- a round on a local simulated autoscaling cluster ---------------------------------------------------------
#
# ray.cluster_utils.AutoscalingCluster cannot be used here as it ships: in the Ray 2.60 wheel its constructor reads
# autoscaler/_private/fake_multi_node/example.yaml, which the wheel does not contain (FileNotFoundError), and its
# start()/shutdown() run `ray stop --force`, which would end every Ray cluster on this shared machine. The
# cluster below is what it starts, done directly: a `ray start --head --block` whose autoscaler uses the same
# fake_multinode provider (RAY_FAKE_CLUSTER=1) and starts real raylets as worker nodes on demand. The whole
# process group is ended at teardown. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray resolve every address to
# 127.0.0.1 (the simulated nodes would otherwise bind to the machine's public IP).

SAMPLER_TYPE = {"CPU": 2, "r3v_sampler": 2}  # a worker type per role, told apart by a custom resource
TRAINER_TYPE = {"CPU": 2, "r3v_trainer": 2}
OBJECT_STORE = 300 * 1024 * 1024


def fake_cluster_config(gcs_port: int, worker_types: dict[str, dict], idle_timeout_minutes: float) -> dict:
    """An autoscaler config for the fake_multinode provider: a head with no CPUs and worker types with min 0."""
    types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, resources in worker_types.items():
        types[name] = {"resources": dict(resources, object_store_memory=OBJECT_STORE), "node_config": {},
                       "min_workers": 0, "max_workers": 1}
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                   "worker_start_ray_commands")
    return {
        "cluster_name": "r3v-fake", "max_workers": len(worker_types), "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "auth": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False, "head_node_type": "ray.head.default", "available_node_types": types,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        **{k: [] for k in empty_lists},
    }


def _get(url: str) -> dict:
    return json.load(urllib.request.urlopen(url, timeout=10))


@contextmanager
def local_autoscaling_cluster(worker_types: dict[str, dict], idle_timeout_minutes: float):
    """Yields (gcs address, dashboard url, env); the head's process group (autoscaler and simulated nodes) is
    ended on exit."""
    tmp = tempfile.mkdtemp(prefix="r3v-as-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs = free_port()  # the autoscaler config names it, so it is chosen before the head starts
    config = Path(tmp) / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(gcs, worker_types, idle_timeout_minutes)))
    env = subprocess_env(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_FAKE_CLUSTER="1",
                         AUTOSCALER_UPDATE_INTERVAL_S="1")

    def nodes_answer(ports: dict) -> None:
        _get(f"http://127.0.0.1:{ports['dashboard']}/api/v0/nodes?limit=10")

    passed = False
    with ray_head(Path(tmp) / "head.log", env, nodes_answer, "--num-cpus=0", f"--autoscaling-config={config}",
                  f"--object-store-memory={OBJECT_STORE}", f"--temp-dir={tmp}", gcs_port=gcs) as ports:
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{ports['dashboard']}", env
        passed = True
    if passed:  # the session logs stay on a failure, for a look at the autoscaler's monitor.log
        shutil.rmtree(tmp, ignore_errors=True)


class ClusterWatcher(threading.Thread):
    """Polls the state API: alive worker nodes by type, and which of our actors are alive, with timestamps."""

    def __init__(self, url: str, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.period_s = url, period_s
        self.samples: list[dict] = []  # {"t", "workers": {node_id: type}, "actors": {(class name, node_id)}}
        self.nodes: dict[str, dict] = {}  # node_id -> latest state-API record (workers only)
        self.stop = threading.Event()

    def poll(self) -> dict:
        nodes = _get(f"{self.url}/api/v0/nodes?limit=1000&detail=true")["data"]["result"]["result"]
        actors = _get(f"{self.url}/api/v0/actors?limit=1000&filter_keys=state&filter_predicates=%3D"
                      "&filter_values=ALIVE")["data"]["result"]["result"]
        workers = {}
        for n in nodes:
            if n["is_head_node"]:
                continue
            self.nodes[n["node_id"]] = n
            if n["state"] == "ALIVE":
                workers[n["node_id"]] = node_type(n)
        sample = {"t": time.time(), "workers": workers, "actors": {(a["class_name"], a["node_id"]) for a in actors}}
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception:  # the dashboard can be slow under load; the next poll counts
                pass
            self.stop.wait(self.period_s)


def node_type(node: dict) -> str:
    res = node["resources_total"]
    return "sampler" if "r3v_sampler" in res else "trainer" if "r3v_trainer" in res else "other"


def stage_windows(run: Path, rounds: int) -> list[tuple[str, float, float]]:
    """(stage, start, end) of every finished stage, from the round manifests."""
    out = []
    for k in range(rounds + 1):
        stages = json.loads((run / f"round-{k:03d}" / "manifest.json").read_text())["stages"]
        for name, rec in stages.items():
            out.append((name, rec["finished_at"] - rec["seconds"], rec["finished_at"]))
    return out


def most_alive(samples: list[dict], windows, kind: str, stages: set[str]) -> int:
    """The most alive worker nodes of one type seen while any of `stages` ran."""
    return max((sum(v == kind for v in s["workers"].values()) for s in samples
                if any(name in stages and a <= s["t"] <= b for name, a, b in windows)), default=0)


@pytest.mark.slow
def test_round_on_local_autoscaling_cluster_adds_nodes_per_stage_and_removes_them(tmp_path, tiny_model_dir,
                                                                                   synthetic_data_dir):
    cfg = {
        "name": "as", "rounds": 1,
        "model": {"path": tiny_model_dir},
        "task": {"name": "synthetic", "data_dir": synthetic_data_dir, "max_train": 12, "max_test": 6},
        "sampling": {"num_samples": 2, "max_new_tokens": 24, "batch_size": 6},
        "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
        "evaluation": {"n": 2, "max_new_tokens": 24, "zero_shot": False, "select": False},  # lean: 2 passes
        # The custom resources are what steer each stage to its node type (as accelerator types do on AWS).
        # One actor/worker each keeps the run light on 2 cores; the multi-worker paths are tested elsewhere.
        "resources": {"num_samplers": 1, "num_train_workers": 1, "sampler_resources": {"r3v_sampler": 1},
                      "train_worker_resources": {"r3v_trainer": 1}},
        "storage": {"root": str(tmp_path / "runs")},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "as"

    with local_autoscaling_cluster({"sampler": SAMPLER_TYPE, "trainer": TRAINER_TYPE}, 0.1) as (gcs, url, env):
        watcher = ClusterWatcher(url)
        assert watcher.poll()["workers"] == {}  # min_workers 0: nothing but the CPU-less head
        watcher.start()
        try:
            done = subprocess.run([PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)], cwd=ROOT,
                                  env=env | {"RAY_ADDRESS": gcs}, capture_output=True, text=True, timeout=1200)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
            # Idle workers are removed by the autoscaler (idle timeout 6 s); wait for it, bounded.
            deadline = time.time() + 240
            while watcher.samples[-1]["workers"] and time.time() < deadline:
                time.sleep(1)
        finally:
            watcher.stop.set()
            watcher.join(timeout=30)
        final = watcher.poll()
        all_actors = _get(f"{url}/api/v0/actors?limit=1000")["data"]["result"]["result"]

    assert json.loads((run / "round-001" / "eval.json").read_text())["num_questions"] == 6
    windows = stage_windows(run, rounds=1)
    assert {w[0] for w in windows} == {"sample", "build", "train", "eval"}
    uses = {"sampler": {"sample", "eval"}, "trainer": {"train"}}

    # Worker nodes of both types were added, each one while a stage that asks for its type was running.
    started = {t: [n for n in watcher.nodes.values() if node_type(n) == t] for t in uses}
    assert started["sampler"] and started["trainer"], watcher.nodes
    for kind, nodes in started.items():
        for n in nodes:
            t = n["start_time_ms"] / 1000
            assert any(s in uses[kind] and a - 1 <= t <= b + 1 for s, a, b in windows), (kind, t, windows)
    assert most_alive(watcher.samples, windows, "sampler", {"sample"}) >= 1
    assert most_alive(watcher.samples, windows, "sampler", {"eval"}) >= 1
    assert most_alive(watcher.samples, windows, "trainer", {"train"}) >= 1
    assert max(len(s["workers"]) for s in watcher.samples) <= 2  # max_workers 1 per type

    # Both kinds of actor ran, each on a node of its own type, and all are dead now. Read from the GCS's record of
    # every actor rather than from the polls: a short-lived sampler pool can fall between two polls under load.
    by_id = {n["node_id"]: node_type(n) for n in watcher.nodes.values()}
    ran = {(a["class_name"], by_id.get(a["node_id"]), a["state"]) for a in all_actors}
    assert any("EngineActor" in c and t == "sampler" and s == "DEAD" for c, t, s in ran), ran
    assert any(c == "RayTrainWorker" and t == "trainer" and s == "DEAD" for c, t, s in ran), ran
    # Sampler actors were gone whenever training workers were alive (samplers release before training).
    names = [{c for c, _ in s["actors"]} for s in watcher.samples]
    assert any("RayTrainWorker" in n for n in names)
    assert not [n for n in names if "RayTrainWorker" in n and any("EngineActor" in c for c in n)]

    # ... and after the round every worker node was removed for being idle.
    assert final["workers"] == {}, final
    assert all(n["state"] == "DEAD" and n["end_time_ms"] > 0 for n in watcher.nodes.values()), watcher.nodes
    print(json.dumps({"windows": windows, "nodes": {k: (node_type(n), n["start_time_ms"], n["end_time_ms"])
                                                      for k, n in watcher.nodes.items()},
                      "polls": len(watcher.samples)}))


def test_kuberay_rayjob_groups_hold_what_the_gpu_config_asks_for():
    from r3v_ray.cluster.plan import plan, units_per_node

    job = yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "jobs/selftrain.py" in job["spec"]["entrypoint"]
    groups = {}
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        custom = json.loads(json.loads(g["rayStartParams"]["resources"]))  # KubeRay's quoted JSON string
        groups[g["groupName"]] = {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"]), **custom}
    stages = {s["stage"]: s for s in plan(load_config(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml"))}
    # Each stage fits only its own group, and the group's maxReplicas covers the stage's units.
    for stage, group in (("sample", "gpu-sampler"), ("train", "gpu-trainer"), ("serve", "gpu-sampler")):
        fits = {name: units_per_node(stages[stage]["per_unit"], res) for name, res in groups.items()}
        assert [n for n, k in fits.items() if k > 0] == [group], (stage, fits)
    spec = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    for stage, group in (("sample", "gpu-sampler"), ("train", "gpu-trainer")):
        per_pod = units_per_node(stages[stage]["per_unit"], groups[group])
        assert spec[group]["maxReplicas"] * per_pod >= stages[stage]["units"]
