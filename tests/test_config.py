from pathlib import Path

import pytest
import yaml

from r3v_ray.config import ConfigError, config_from_dict, load_config
from r3v_ray.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.model.tiny is not None and cfg.sampling.engine == "hf"
    assert cfg.run_dir == "runs/demo"


@pytest.mark.parametrize(
    "data, field",
    [
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"sampling": {"num_samples": 0}}, "sampling.num_samples"),
        ({"sampling": {"engine": "tgi"}}, "sampling.engine"),
        ({"trainng": {}}, "trainng"),
        ({"training": {"zero_stage": 4}}, "training.zero_stage"),
        ({"reflect": {"select_variant": "random"}}, "reflect.select_variant"),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "bad.yaml")
    assert field in str(info.value) and "bad.yaml" in str(info.value)


def test_yaml_errors_name_the_file_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: [1\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(path)
    path.write_text("rounds: 1\n")
    cfg = load_config(path, ["training.alpha=0.5", "sampling.num_samples=5"])
    assert cfg.training.alpha == 0.5 and cfg.sampling.num_samples == 5
    with pytest.raises(ConfigError, match="training.alpha"):
        load_config(path, ["training.alpha=-1"])


def test_star_is_a_config_switch():
    cfg = config_from_dict({"method": "star"})
    assert (cfg.training.alpha, cfg.training.beta) == (0.0, 0.0)
    assert not cfg.reflect.use_refine and not cfg.reflect.use_select
    assert config_from_dict({}).digest() != cfg.digest()


def test_star_refuses_a_setting_it_would_overwrite_and_accepts_an_agreeing_one():
    with pytest.raises(ConfigError, match=r"training.alpha: 0.5 conflicts with method: star"):
        config_from_dict({"method": "star", "training": {"alpha": 0.5}})
    with pytest.raises(ConfigError, match=r"reflect.use_select: True conflicts with method: star"):
        config_from_dict({"method": "star", "reflect": {"use_select": True}})
    agreeing = config_from_dict({"method": "star", "training": {"alpha": 0.0, "lr": 1e-4}})
    assert agreeing.training.lr == 1e-4 and agreeing.training.beta == 0.0
    # a star run's own config.yaml (the preset's values written out) loads back unchanged
    assert config_from_dict(yaml.safe_load(agreeing.to_yaml())).digest() == agreeing.digest()


def test_digest_covers_what_decides_outputs_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = config_from_dict({"task": {"data_dir": "data"}})
    same = [{"rounds": 7}, {"resources": {"num_samplers": 8}}, {"serve": {"port": 9000}},
            {"storage": {"root": "s3://bucket/runs"}}, {"task": {"data_dir": str(tmp_path / "data")}}]
    for change in same:
        assert config_from_dict(change | {"task": change.get("task", {"data_dir": "data"})}).digest() == base.digest()
    assert config_from_dict({"task": {"data_dir": "data"}, "sampling": {"temperature": 0.5}}).digest() != base.digest()


def test_built_model_and_data_are_reused_only_with_the_same_settings(tmp_path):
    from r3v_ray.pipeline.prepare import ensure_data

    cfg = config_from_dict({"task": {"data_dir": str(tmp_path / "d"), "num_train": 3, "num_test": 2}})
    first = ensure_data(cfg)
    assert ensure_data(cfg) == first  # same settings: reused
    other = config_from_dict({"task": {"data_dir": str(tmp_path / "d"), "num_train": 3, "num_test": 2,
                                       "params": {"colors": ["red", "blue"]}}})
    with pytest.raises(ValueError, match="was built with"):
        ensure_data(other)
    handmade = tmp_path / "handmade"
    get_task("synthetic").write_dataset(handmade, 2, 1, seed=0)
    assert ensure_data(config_from_dict({"task": {"data_dir": str(handmade)}})) == str(handmade)


def test_a_run_refuses_a_changed_config_and_names_the_changed_keys(tmp_path):
    from r3v_ray.pipeline.round import _write_config

    from r3v_ray.run.layout import RunDir

    root = {"storage": {"root": str(tmp_path)}}
    first = config_from_dict({"name": "x", **root})
    _write_config(first, force=False)
    changed = config_from_dict({"name": "x", "rounds": 5, **root, "training": {"lr": 0.5},
                                "task": {"params": {"colors": ["red"]}}})  # rounds: scheduling, not named
    # A config under which no stage ever finished (a failed first try) pins nothing: it is replaced.
    _write_config(changed, force=False)
    assert "lr: 0.5" in (tmp_path / "x" / "config.yaml").read_text()
    _write_config(first, force=False)
    RunDir.of(first).round(0).open_manifest(first.digest()).record("build", 1.0)  # now a stage is done
    with pytest.raises(ConfigError, match=r"changed: task\.params\.colors, training\.lr\)\. Re-run with --force"):
        _write_config(changed, force=False)
    _write_config(config_from_dict({"name": "x", "rounds": 7, **root}), force=False)  # scheduling only: accepted
    _write_config(changed, force=True)


def test_the_tiny_model_builder_takes_its_defaults_from_the_config():
    import dataclasses

    from r3v_ray.config import TinyModelConfig
    from r3v_ray.models.tiny import TinySpec

    spec = {f.name: f.default for f in dataclasses.fields(TinySpec) if f.default is not dataclasses.MISSING}
    cfg = TinyModelConfig().model_dump(exclude={"pretrain"})  # the pretrained base's settings, not the model's
    assert set(cfg) <= set(spec)
    assert {k: spec[k] for k in cfg} == cfg
    assert TinySpec().family == TinyModelConfig().family == "qwen2_vl"


def test_the_configuration_page_is_generated_from_the_fields():
    from r3v_ray.config_reference import reference_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert page == reference_markdown(), "docs/configuration.md is stale: run `make docs`"


def test_star_applies_to_a_section_given_as_a_model_too():
    from r3v_ray.config import ReflectConfig, RunConfig

    cfg = RunConfig(method="star", reflect=ReflectConfig(seed=3))
    assert (cfg.reflect.use_refine, cfg.reflect.use_select, cfg.reflect.seed) == (False, False, 3)
    with pytest.raises(ValueError, match="reflect.use_select: True conflicts with method: star"):
        RunConfig(method="star", reflect=ReflectConfig(use_select=True))
