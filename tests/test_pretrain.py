"""The pretrained tiny base (model.tiny.pretrain, r3v_ray/pipeline/pretrain.py): its pool, its cache key, its build."""

from __future__ import annotations

import random
import re

import pytest

from r3v_ray.config import ConfigError, config_from_dict
from r3v_ray.pipeline.pretrain import pretrained_path, task_layouts
from r3v_ray.tasks import get_task

SMALL = {"num_images": 8, "captions": 1, "arithmetic": 8, "epochs": 1, "lr": 1.0e-3}


def config(tmp_path=None, pretrain=SMALL, **sections):
    root = tmp_path or "runs"
    data = {"model": {"path": f"{root}/model", "tiny": {"pretrain": pretrain}},
            "task": {"name": "synthetic", "data_dir": f"{root}/data", "num_train": 24, "num_test": 12},
            "training": {"global_batch_size": 8, "micro_batch_size": 4, "max_seq_len": 384},
            "resources": {"num_train_workers": 1}, "storage": {"root": f"{root}/runs"}}
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config_from_dict(data, "test")


def test_the_pool_has_no_image_of_a_train_or_test_question_and_none_twice():
    cfg = config(task={"num_train": 600, "num_test": 600})
    task = get_task("synthetic")
    questions = task_layouts(task, cfg)
    # drawn from the task's own generator the pool would repeat some question images (~100k layouts)
    pool = task.pool_records(2000, seed=1, exclude=questions)
    layouts = [tuple(r.metadata["layout"]) for r in pool]
    assert len(pool) == 2000 and len(set(layouts)) == 2000
    assert not questions & set(layouts)
    assert all(r.id.startswith("pool-") for r in pool)


def test_the_pool_is_deterministic_in_its_seed():
    task = get_task("synthetic")
    first, again, other = (task.pool_records(50, seed, set()) for seed in (1, 1, 2))
    assert [r.metadata for r in first] == [r.metadata for r in again] != [r.metadata for r in other]


def test_a_pool_larger_than_the_free_layouts_is_refused():
    task = get_task("synthetic", grid=2, colors=["red", "blue"])  # 2-4 objects in 4 cells: 6*4 + 4*8 + 16 layouts
    with pytest.raises(ValueError, match="only 72 pool images"):
        task.pool_records(100, seed=1, exclude=set())


@pytest.mark.parametrize("question_types", [("sum", "subtract", "compare"), ("sum", "product")])
def test_arithmetic_examples_are_true_and_in_the_rationales_form(question_types):
    pairs = get_task("synthetic", question_types=list(question_types)).arithmetic_examples(300, seed=1)
    ops = set()
    for prompt, target in pairs:
        if m := re.fullmatch(r"(\d+) is (not )?more than (\d+)\.", target):
            assert (int(m[1]) > int(m[3])) != bool(m[2]) and prompt == f"Is {m[1]} more than {m[3]}?"
            ops.add("compare")
            continue
        expr, value = target.rstrip(".").split(" = ")
        assert prompt == f"Compute {expr}." and eval(expr.replace("x", "*")) == int(value) >= 0
        ops.update(op for op in "+-x" if f" {op} " in expr)
    assert ops == {"+", "-", "compare"} | ({"x"} if "product" in question_types else set())  # x where asked


def test_every_pool_example_shows_an_image_and_captions_count_it():
    from r3v_ray.pipeline.pretrain import pool_examples

    task = get_task("synthetic")
    records = task.pool_records(4, seed=1, exclude=set())
    for i, r in enumerate(records):
        r.image = f"images/{r.id}.png"
    examples = pool_examples(task, records, 2, task.arithmetic_examples(6, seed=1), seed=1, counts=3)
    assert len(examples) == 4 * (2 + 3) + 6 and all(e["image"] for e in examples)
    captions = [e for e in examples if e["question_id"].startswith("pool-") and "State" not in e["prompt"]]
    assert all(e["target"] == task.caption(records[int(e["question_id"][5:])]) for e in captions)
    assert len({e["prompt"] for e in captions if e["question_id"] == "pool-00000"}) == 2


def test_count_statements_state_the_image_counts_of_the_colours_asked_in_the_order_asked():
    from r3v_ray.tasks.synthetic import _count

    task = get_task("synthetic")
    rng = random.Random(0)
    layout = task.random_layout(rng)
    seen_orders = set()
    for _ in range(50):
        prompt, target = task.count_statement(layout, rng)
        asked = re.findall(r"(\w+) objects", prompt.removeprefix("State the number of "))
        stated = re.findall(r"(\w+) objects: (\d+)\.", target)
        assert [name.lower() for name, _ in stated] == asked and 1 <= len(asked) <= 3
        assert all(int(n) == _count(layout, None if name == "All" else name.lower()) for name, n in stated)
        seen_orders.add(tuple(asked))
    assert len(seen_orders) > 10  # orders and subsets vary, unlike the captions'


@pytest.mark.parametrize("change", [
    {"model": {"tiny": {"pretrain": {**SMALL, "lr": 2.0e-3}}}},
    {"model": {"tiny": {"pretrain": {**SMALL, "data_seed": 2}}}},
    {"model": {"tiny": {"pretrain": {**SMALL, "counts": 2}}}},
    {"model": {"tiny": {"pretrain": SMALL, "seed": 1}}},
    {"task": {"data_seed": 1}},
    {"task": {"params": {"colors": ["red", "green", "blue"]}}},
    {"training": {"seed": 1}},
    {"resources": {"num_train_workers": 2}},
])
def test_a_setting_that_changes_the_base_changes_where_it_is_cached(change):
    assert pretrained_path(config(**change)) != pretrained_path(config())


@pytest.mark.parametrize("change", [{"training": {"alpha": 0.0, "lr": 1.0}}, {"training": {"finetune": "lora"}},
                                    {"sampling": {"num_samples": 6}}, {"rounds": 2}])
def test_a_setting_of_the_rounds_only_reuses_the_cached_base(change):
    assert pretrained_path(config(**change)) == pretrained_path(config())


@pytest.mark.parametrize("pretrain, field", [({"num_images": 0}, "model.tiny.pretrain.num_images"),
                                            ({"captions": 9}, "model.tiny.pretrain.captions"),
                                            ({"lr": -1}, "model.tiny.pretrain.lr"),
                                            ({"epoch": 1}, "model.tiny.pretrain.epoch")])
def test_bad_pretrain_values_are_refused_naming_the_field(pretrain, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        config(pretrain=pretrain)


def test_pretrain_needs_the_built_in_task():
    with pytest.raises(ConfigError, match=r"model\.tiny\.pretrain: .*synthetic"):
        config(task={"name": "geoqa"})


def test_the_base_is_pretrained_once_into_its_keyed_directory_and_then_reused(ray_local, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from r3v_ray.pipeline import prepare
    from r3v_ray.pipeline import pretrain

    cfg = config(tmp_path, resources={"num_train_workers": 2})  # two ranks: a micro-batch each, all-reduced
    path = prepare.ensure_model(cfg)
    assert path == pretrained_path(cfg) and (tmp_path / "model" / "config.json").is_file()
    random_weights, trained = (load_file(f"{p}/model.safetensors") for p in (tmp_path / "model", path))
    changed = {name for name, w in random_weights.items() if not torch.equal(w, trained[name])}
    assert any(name.startswith("visual.") for name in changed)  # the vision tower learns too
    assert any(name.startswith("model.layers.") for name in changed)

    def no_second_build(*args):
        raise AssertionError("the cached base was built again")

    monkeypatch.setattr(pretrain, "build_pretrained", no_second_build)
    assert prepare.ensure_model(cfg) == path
