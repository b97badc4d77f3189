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


def test_temperature_sweep_table_has_a_column_per_temperature_and_the_main_one():
    from r3v_ray.reproduce import sweep_markdown, sweep_values

    def ev(maj, sel):  # a sweep evaluation: no greedy pass, so no Test@1
        return {"majority@3": maj, "select@3": sel, "oracle@3": 60.0}

    per_seed = {s: sweep_values(ev(30.0 + s, 45.0) | {"test@1": 40.0 + s}, 0.9,
                                {0.3: ev(41.0 + s, 39.0), 0.5: ev(35.0, 42.0)}, 3)
                for s in (0, 1)}
    assert list(per_seed[0]) == ["T=0.3", "T=0.5", "T=0.9"]
    assert [per_seed[1][c]["Test@1"] for c in per_seed[1]] == [41.0, 41.0, 41.0]  # the main evaluation's greedy
    table = sweep_markdown(per_seed, 3).splitlines()
    assert table[0] == "| metric (N=3), mean ± std over seeds | T=0.3 | T=0.5 | T=0.9 |"
    assert "| Majority@3 | 41.50 ± 0.50 | 35.00 ± 0.00 | 30.50 ± 0.50 |" in table
    assert "| Select@3 | 39.00 ± 0.00 | 42.00 ± 0.00 | 45.00 ± 0.00 |" in table


def test_temperature_sweep_reuses_an_evaluation_finished_under_the_same_config(tmp_path):
    from r3v_ray.reproduce import sweep_temperatures

    cfg = config_from_dict({"name": "b", "rounds": 1, "storage": {"root": str(tmp_path)}})
    done = tmp_path / "b" / "round-001" / "eval-sweep" / "T0.5" / "eval.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"majority@3": 12.5, "config_digest": cfg.digest()}))
    # No checkpoint and no Ray here: a finished evaluation is read back, not run again.
    assert sweep_temperatures(cfg, [0.5])[0.5]["majority@3"] == 12.5
