"""The reproduction's bookkeeping (pure): per-seed configs, round-0 adoption, the table."""

import json

from r3v_ray.config import config_from_dict
from r3v_ray.reproduce import adopt_round0, seed_config, summarize, table_markdown


def test_seed_configs_change_every_random_choice_and_the_method():
    base = config_from_dict({"name": "b", "model": {"path": "runs/m", "tiny": {}}})
    a, b = seed_config(base, 0, "r3v"), seed_config(base, 1, "star")
    assert (a.name, b.name) == ("b-s0-r3v", "b-s1-star")
    assert b.training.alpha == 0 and not b.reflect.use_select and a.training.alpha == 1
    assert b.training.seed == b.reflect.seed == b.evaluation.seed == b.model.tiny.seed == 1
    assert a.model.path != b.model.path  # a different random initialisation per seed


def test_star_adopts_round0_of_r3v_under_its_own_digest(tmp_path):
    base = config_from_dict({"name": "b", "storage": {"root": str(tmp_path)}})
    r3v, star = seed_config(base, 0, "r3v"), seed_config(base, 0, "star")
    src = tmp_path / "b-s0-r3v" / "round-000"
    (src / "checkpoint").mkdir(parents=True)
    (src / "checkpoint" / "config.json").write_text("{}")
    (src / "manifest.json").write_text(json.dumps({"config_digest": r3v.digest(), "round": 0,
                                                   "stages": {"train": {"status": "done"}}}))
    adopt_round0(r3v, star)
    manifest = json.loads((tmp_path / "b-s0-star" / "round-000" / "manifest.json").read_text())
    assert manifest["config_digest"] == star.digest() and manifest["stages"]["train"]["adopted_from"]
    assert (tmp_path / "b-s0-star" / "round-000" / "checkpoint" / "config.json").is_file()


def test_summary_and_table():
    per_seed = {0: {"R3V, Select@N": 50.0, "R3V, Test@1": 40.0}, 1: {"R3V, Select@N": 60.0, "R3V, Test@1": 40.0}}
    summary = summarize(per_seed)
    assert summary["R3V, Select@N"]["mean"] == 55.0 and summary["R3V, Select@N"]["std"] == 5.0
    table = table_markdown(summary, [0, 1], 3)
    assert "| R3V, Select@3 | 55.00 | 5.00 | 50.00 | 60.00 |" in table


def test_table_keeps_the_paper_order_whatever_the_key_order():
    from r3v_ray.reproduce import ROWS

    per_seed = {0: {label: 1.0 for label, *_ in reversed(ROWS)}}
    table = table_markdown(summarize(per_seed), [0], 3)
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows[0].startswith("zero-shot") and rows[-1] == "R3V, Oracle@3"
