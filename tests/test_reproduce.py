"""The reproduction's bookkeeping (pure): per-seed configs, round-0 adoption, the table."""

import json

import pytest

from r3v_ray.config import ConfigError, config_from_dict
from r3v_ray.experiments.reproduce import adopt_round0, seed_config, summarize, table_markdown


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
    from r3v_ray.experiments.reproduce import ROWS

    per_seed = {0: {label: 1.0 for label, *_ in reversed(ROWS)}}
    table = table_markdown(summarize(per_seed), [0], 3)
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["zero-shot CoT (untrained)", "warm-up M0, Test@1", "STaR, Test@1", "R3V, Test@1",
                    "R3V, Majority@3", "R3V, Select@3", "R3V, Oracle@3",
                    "R3V w/o self-refine, Test@1", "R3V w/o self-refine, Select@3",
                    "R3V w/o self-select, Test@1", "R3V w/o self-select, Select@3",
                    "R3V mixed select sets, Test@1", "R3V mixed select sets, Select@3",
                    "warm-up M0, faithful@1", "STaR, faithful@1", "R3V, faithful@1",
                    "warm-up M0, grounded@1", "STaR, grounded@1", "R3V, grounded@1"]


def test_temperature_sweep_table_has_a_column_per_temperature_and_the_main_one():
    from r3v_ray.experiments.reproduce import sweep_markdown, sweep_values

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
    from r3v_ray.experiments.reproduce import sweep_temperatures

    cfg = config_from_dict({"name": "b", "rounds": 1, "storage": {"root": str(tmp_path)}})
    done = tmp_path / "b" / "round-001" / "eval-sweep" / "T0.5" / "eval.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"majority@3": 12.5, "config_digest": cfg.digest()}))
    # No checkpoint and no Ray here: a finished evaluation is read back, not run again.
    assert sweep_temperatures(cfg, [0.5])[0.5]["majority@3"] == 12.5


def test_ablations_are_config_switches_of_the_same_loop_from_the_same_warm_up():
    from r3v_ray.experiments.reproduce import VARIANTS

    base = config_from_dict({"name": "b", "model": {"path": "runs/m", "tiny": {}}})
    runs = {v: seed_config(base, 2, v) for v in VARIANTS}
    assert {v: c.name for v, c in runs.items()} == {
        "r3v": "b-s2-r3v", "star": "b-s2-star", "no-refine": "b-s2-no-refine", "no-select": "b-s2-no-select",
        "mixed": "b-s2-mixed"}
    no_refine, no_select = runs["no-refine"], runs["no-select"]
    assert no_refine.method == no_select.method == "r3v"
    assert (no_refine.reflect.use_refine, no_refine.reflect.use_select, no_refine.training.alpha,
            no_refine.training.beta) == (False, True, 0.0, 1.0)
    assert (no_select.reflect.use_refine, no_select.reflect.use_select, no_select.training.alpha,
            no_select.training.beta) == (True, False, 1.0, 0.0)
    assert runs["mixed"].reflect.select_variant == "mixed" and runs["r3v"].reflect.select_variant == "fixed"
    assert runs["mixed"].sampling.num_samples == 6  # enough samples per question for sets of up to 6
    assert len({c.digest() for c in runs.values()}) == 5 and len({c.model.path for c in runs.values()}) == 1


def test_the_table_has_the_paper_s_geoqa_numbers_beside_ours_where_it_reports_them():
    from r3v_ray.experiments.reproduce import ROWS

    per_seed = {0: {label: 40.0 for label, *_ in ROWS}, 1: {label: 42.0 for label, *_ in ROWS}}
    table = table_markdown(summarize(per_seed), [0, 1], 3).splitlines()
    assert table[0] == "| model / metric (N=3) | mean | spread (std) | seed 0 | seed 1 | paper (Qwen2-VL-7B, GeoQA) |"
    assert "| zero-shot CoT (untrained) | 41.00 | 1.00 | 40.00 | 42.00 | 17.11 |" in table
    assert "| R3V, Test@1 | 41.00 | 1.00 | 40.00 | 42.00 | 51.72 |" in table
    assert "| R3V, Select@3 | 41.00 | 1.00 | 40.00 | 42.00 | 57.96 |" in table
    assert "| R3V, Majority@3 | 41.00 | 1.00 | 40.00 | 42.00 | 54.70 |" in table
    assert "| STaR, Test@1 | 41.00 | 1.00 | 40.00 | 42.00 |  |" in table  # no GeoQA number for it


def _curve(shift):
    return {"candidates": 4, "test@1": 45.0 + shift,
            "oracle": {n: 50.0 + n + shift for n in range(1, 5)},
            "majority": {n: 40.0 + n + shift for n in range(1, 5)},
            "select": {2: 44.0 + shift, 3: 46.0 + shift}}


def test_scaling_table_and_plot_put_select_and_majority_against_n_beside_the_paper(tmp_path):
    from r3v_ray.experiments.reproduce import PAPER_MAJORITY, scaling_markdown, scaling_plot_png

    per_seed = {0: _curve(0.0), 1: _curve(2.0)}
    lines = scaling_markdown(per_seed).splitlines()
    assert lines[0] == ("| n | Majority@n, mean ± std | Select@n, mean ± std | Oracle@n, mean ± std | "
                        "paper Majority@n (Qwen2-VL-7B, GeoQA) | paper Select@n |")
    assert "| 1 | 42.00 ± 1.00 |  | 52.00 ± 1.00 |  |  |" in lines
    assert "| 3 | 44.00 ± 1.00 | 47.00 ± 1.00 | 54.00 ± 1.00 | 54.70 | 57.96 |" in lines
    assert "| 10 |  |  |  | 59.80 |  |" in lines  # the paper's points beyond ours stay in the table
    assert [line.split("|")[1].strip() for line in lines[2:2 + 10]] == [str(n) for n in range(1, 11)]
    assert lines[-1] == "Test@1 (greedy, no candidates): 46.00 ± 1.00."
    assert max(PAPER_MAJORITY) == 10
    assert scaling_plot_png(per_seed)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_scaling_n_is_refused_before_any_seed_runs(tmp_path):
    from r3v_ray.experiments.reproduce import reproduce

    base = config_from_dict({"name": "b", "storage": {"root": str(tmp_path)}})
    for ns, candidates, message in (([2, 12], 10, "evaluation.scaling_ns: 12 is above evaluation.num_candidates"),
                                    ([1, 3], 10, "evaluation.scaling_ns: 1 is below 2")):
        with pytest.raises(ConfigError, match=message):
            reproduce(base, [0], scaling_ns=ns, scaling_candidates=candidates)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_the_scaling_curve_reuses_an_evaluation_finished_under_the_same_settings(tmp_path):
    from r3v_ray.experiments.reproduce import scaling_config, scaling_curve

    cfg = config_from_dict({"name": "b", "rounds": 1, "storage": {"root": str(tmp_path)}})
    done = tmp_path / "b" / "round-001" / "eval-scaling" / "eval.json"
    done.parent.mkdir(parents=True)
    curve = {"candidates": 4, "oracle": {"1": 50.0}, "majority": {"1": 50.0, "2": 48.0}, "select": {"2": 51.0}}
    done.write_text(json.dumps({"scaling": curve, "config_digest": scaling_config(cfg, [2], 4).digest()}))
    # No checkpoint and no Ray here: a finished evaluation is read back, not run again.
    assert scaling_curve(cfg, [2], 4) == {"candidates": 4, "oracle": {1: 50.0}, "majority": {1: 50.0, 2: 48.0},
                                          "select": {2: 51.0}}
    assert scaling_config(cfg, [2], 4).digest() != scaling_config(cfg, [2, 3], 4).digest()


def test_quick_is_one_seed_and_refuses_explicit_seeds(capsys):
    from r3v_ray.cli import main

    assert main(["reproduce", "--quick", "--seeds", "1"]) == 2
    assert "--quick is one seed" in capsys.readouterr().err


def test_variants_adopt_r3v_s_round1_samples_only_when_they_cannot_differ(tmp_path):
    from r3v_ray.experiments.reproduce import adopt_round1_samples

    base = config_from_dict({"name": "b", "rounds": 1, "storage": {"root": str(tmp_path)}})
    r3v, ablation = seed_config(base, 0, "r3v"), seed_config(base, 0, "no-select")
    src = tmp_path / "b-s0-r3v" / "round-001"
    src.mkdir(parents=True)
    (src / "samples.parquet").write_bytes(b"PAR1 samples of M0")
    (src / "manifest.json").write_text(json.dumps({"config_digest": r3v.digest(), "round": 1, "stages": {
        "sample": {"status": "done", "stats": {"num_samples": 3}}}}))
    assert adopt_round1_samples(r3v, ablation)
    dst = tmp_path / "b-s0-no-select" / "round-001"
    assert (dst / "samples.parquet").read_bytes() == b"PAR1 samples of M0"
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["config_digest"] == ablation.digest() and list(manifest["stages"]) == ["sample"]
    assert manifest["stages"]["sample"]["adopted_from"] == str(src)
    assert manifest["stages"]["sample"]["stats"] == {"num_samples": 3}
    # Other sampling settings draw other samples: nothing is adopted.
    hotter = config_from_dict(ablation.model_dump(mode="json") | {"name": "hot"})
    hotter.sampling.temperature = 0.5
    assert not adopt_round1_samples(r3v, hotter) and not (tmp_path / "hot").exists()


def test_scaling_summary_reads_curves_back_from_reproduction_json():
    from r3v_ray.experiments.reproduce import scaling_summary

    per_seed = {0: _curve(0.0), 1: _curve(2.0)}
    again = json.loads(json.dumps(per_seed))
    assert scaling_summary(again) == scaling_summary(per_seed)
    assert list(scaling_summary(again)["majority"]) == [1, 2, 3, 4]


def test_rounds_table_has_a_row_per_run_and_round_with_mean_and_std():
    from r3v_ray.experiments.reproduce import rounds_markdown

    def rounds(shift):
        return {"r3v": {0: {"test@1": 40.0 + shift}, 1: {"test@1": 44.0 + shift, "select@3": 50.0}},
                "star": {0: {"test@1": 40.0 + shift}, 1: {"test@1": 42.0}}}

    table = rounds_markdown({0: rounds(0), 1: rounds(2)}, 3).splitlines()
    assert table[0] == "| run | round | test@1 | select@3 |"
    assert "| r3v | 1 | 45.00 ± 1.00 | 50.00 ± 0.00 |" in table
    assert "| star | 1 | 42.00 ± 0.00 |  |" in table


def test_the_cli_offers_exactly_the_reproduction_s_variants():
    from r3v_ray.cli import build_parser
    from r3v_ray.experiments.reproduce import VARIANTS

    reproduce = next(a for a in build_parser()._subparsers._group_actions[0].choices["reproduce"]._actions
                     if a.dest == "variants")
    assert reproduce.choices == list(VARIANTS)
