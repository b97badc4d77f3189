"""From one machine to a cluster: cluster.yaml against Ray's own validator, `r3v plan`, and a round on a local
simulated autoscaling cluster whose worker nodes come and go with the stages."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from r3v_ray.cli import main as r3v
from r3v_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


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


def test_requests_from_config_are_accepted_by_ray():
    from ray.train import ScalingConfig

    from r3v_ray.resources import sampler_remote_args, scaling_config_kwargs, serve_actor_options

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
