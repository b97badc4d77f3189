"""The evaluation metrics and the report on hand-made rows (pure: no Ray, no model)."""

from pathlib import Path

import pytest

from r3v_ray.config import load_config
from r3v_ray.method.metrics import accuracy_at_1, majority_at_n, oracle_at_n
from r3v_ray.observe.report import table_markdown, write_report
from r3v_ray.tasks import Record, get_task

ROOT = Path(__file__).resolve().parents[1]
TASK = get_task("synthetic")
RECORDS = {q: Record(id=q, question=f"How many? {q}", answer=a, image=f"/img/{q}.png") for q, a in
           [("q1", "3"), ("q2", "5"), ("q3", "2")]}


def row(q, i, answer, rationale=None):
    gold = RECORDS[q].answer
    return {"question_id": q, "sample_index": i, "extracted_answer": answer, "correct": answer == gold,
            "rationale": rationale or f"r{i}\nAnswer: {answer}"}


def test_test_at_1_counts_missing_questions_as_wrong():
    greedy = [row("q1", 0, "3"), row("q2", 0, "4")]  # q3 was skipped: no row
    assert accuracy_at_1(list(RECORDS), greedy) == pytest.approx(100 / 3)


def test_oracle_and_majority_at_n():
    sampled = [
        row("q1", 0, "3"), row("q1", 1, "4"), row("q1", 2, "4"),      # oracle yes, majority 4: wrong
        row("q2", 0, None), row("q2", 1, "5"), row("q2", 2, "6"),     # tie 5 vs 6: earliest (5) wins: right
        row("q3", 0, "1"), row("q3", 1, "1"), row("q3", 2, "2"),      # oracle yes, majority wrong
    ]
    assert oracle_at_n(list(RECORDS), sampled, 3) == pytest.approx(100.0)
    assert oracle_at_n(list(RECORDS), sampled, 1) == pytest.approx(100 / 3)
    assert majority_at_n(RECORDS, TASK, sampled, 3) == pytest.approx(100 / 3)


def test_majority_never_credits_unparseable_answers():
    sampled = [row("q1", i, None) for i in range(3)]
    assert majority_at_n({"q1": RECORDS["q1"]}, TASK, sampled, 3) == 0.0


def test_report_writes_table_and_png(tmp_path):
    runs = {"demo (r3v)": [{"round": 0, "test@1": 10.0, "zero-shot": 2.0}, {"round": 1, "test@1": 20.0,
                                                                          "majority@3": 25.0, "select@3": 30.0}],
            "demo (star)": [{"round": 1, "test@1": 15.0}]}
    table = write_report(str(tmp_path), runs, "t")
    assert "| demo (r3v) | 1 | " in table and "30.00" in table
    assert table.splitlines()[0].index("zero-shot") < table.splitlines()[0].index("test@1")
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy.png" in (tmp_path / "report.md").read_text()
    assert table == table_markdown(runs)


def test_gpu_config_parses_with_the_paper_settings():
    cfg = load_config(ROOT / "configs" / "qwen2vl-7b-geoqa.yaml")
    assert cfg.model.path == "Qwen/Qwen2-VL-7B-Instruct" and cfg.sampling.engine == "vllm"
    s, t = cfg.sampling, cfg.training
    assert (s.num_samples, s.temperature, s.top_p, s.top_k) == (3, 0.9, 0.95, 50)
    assert (t.finetune, t.lr, t.epochs, t.global_batch_size, t.zero_stage, t.bf16, t.init_from) == (
        "lora", 3e-5, 3, 64, 2, True, "base")
    assert cfg.rounds == 3


def test_scaling_curves_score_the_first_n_candidates_at_every_n():
    from r3v_ray.method.metrics import curve_points, majority_curve, oracle_curve

    # Gold answers: q1 3, q2 5, q3 2. Majority ties go to the earliest answer (selection.majority_vote).
    answers = {"q1": ["4", "3", "3", "4", "4"],   # vote right at n=3 only (n=2 and n=4: ties won by 4)
               "q2": ["5", "6", "6", "6", None],  # vote right at n=1 and n=2 (tie won by 5)
               "q3": [None, None, "1", "1", "2"]}  # vote never right; a right candidate only at n=5
    sampled = [row(q, i, a) for q, values in answers.items() for i, a in enumerate(values)]
    oracle = oracle_curve(list(RECORDS), sampled, 5)
    majority = majority_curve(RECORDS, TASK, sampled, 5)
    third = 100 / 3
    assert oracle == pytest.approx({1: third, 2: 2 * third, 3: 2 * third, 4: 2 * third, 5: 100.0})
    assert majority == pytest.approx({1: third, 2: third, 3: third, 4: 0.0, 5: 0.0})
    # Each point equals the single-n metric: one pure rule for the headline N and the curve.
    assert all(majority[n] == majority_at_n(RECORDS, TASK, sampled, n) for n in majority)
    assert all(oracle[n] == oracle_at_n(list(RECORDS), sampled, n) for n in oracle)
    ev = {"scaling": {"candidates": 5, "oracle": {str(n): v for n, v in oracle.items()}, "select": {"3": 1.0, "2": 2.0}}}
    assert curve_points(ev, "select") == [(2, 2.0), (3, 1.0)]  # read back from JSON's string keys, by n
    assert [n for n, _ in curve_points(ev, "oracle")] == [1, 2, 3, 4, 5]
    assert curve_points({"test@1": 3.0}, "majority") == []


@pytest.mark.parametrize(
    "evaluation, message",
    [
        ({"scaling_ns": [2, 12], "num_candidates": 10}, "evaluation.scaling_ns: 12 is above evaluation.num_candidates (10)"),
        ({"scaling_ns": [1, 2]}, "evaluation.scaling_ns: 1 is below 2"),
        ({"scaling_ns": [0], "select": False}, "evaluation.scaling_ns: 0 is below 1"),
        ({"n": 4, "num_candidates": 3}, "evaluation.n (4) is above evaluation.num_candidates (3)"),
        ({"num_candidates": 0}, "evaluation.num_candidates"),
    ],
)
def test_a_scaling_entry_outside_the_candidates_drawn_is_refused_when_the_config_loads(tmp_path, evaluation, message):
    import yaml

    from r3v_ray.config import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"evaluation": evaluation}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "run.yaml" in str(info.value)


def test_scaling_settings_draw_the_largest_n_leave_the_default_cost_alone_and_change_the_digest():
    from r3v_ray.config import config_from_dict

    default = config_from_dict({}).evaluation
    assert (default.candidates, default.select_ns, default.scaling) == (3, [3], False)
    ev = config_from_dict({"evaluation": {"scaling_ns": [6, 2, 4]}}).evaluation
    assert (ev.candidates, ev.select_ns, ev.scaling) == (6, [2, 3, 4, 6], True)
    ev = config_from_dict({"evaluation": {"scaling_ns": [2, 3], "num_candidates": 10, "select": False}}).evaluation
    assert (ev.candidates, ev.select_ns) == (10, [])
    assert config_from_dict({"evaluation": {"select": False, "scaling_ns": [1]}}).evaluation.candidates == 3
    assert config_from_dict({"evaluation": {"scaling_ns": [2, 3]}}).digest() != config_from_dict({}).digest()


def test_report_carries_every_scaling_point_and_plots_the_last_round(tmp_path):
    curve = {"candidates": 4, "oracle": {"1": 40.0, "2": 50.0, "3": 55.0, "4": 60.0},
             "majority": {"1": 40.0, "2": 38.0, "3": 42.0, "4": 43.0}, "select": {"2": 44.0, "3": 45.5}}
    runs = {"demo (r3v)": [{"round": 0, "test@1": 10.0}, {"round": 1, "test@1": 20.0, "select@3": 45.5,
                                                         "scaling": curve}]}
    plain = {"demo (r3v)": [{"round": 0, "test@1": 10.0}, {"round": 1, "test@1": 20.0, "select@3": 45.5}]}
    table = write_report(str(tmp_path), runs, "t")
    assert table == table_markdown(plain)  # the rounds table is the same with or without a curve
    text = (tmp_path / "report.md").read_text()
    assert "demo (r3v) round 1 (4 candidates drawn" in text
    assert "| 1 | 40.00 | 40.00 |  |" in text and "| 3 | 55.00 | 42.00 | 45.50 |" in text
    assert "| 4 | 60.00 | 43.00 |  |" in text
    from PIL import Image

    with_curve = Image.open(tmp_path / "accuracy.png").size
    write_report(str(tmp_path / "plain"), plain, "t")
    without = Image.open(tmp_path / "plain" / "accuracy.png").size
    assert with_curve[0] > without[0] and "Test-time scaling" not in (tmp_path / "plain" / "report.md").read_text()


def test_faithfulness_at_1_scores_every_question_and_is_absent_where_the_task_cannot_check():
    from r3v_ray.method.metrics import faithfulness_at_1

    layout = ["red", "red", "blue", None, None, None, None, None, None]
    meta = {"layout": layout, "qtype": "sum", "colors": ["red", "blue"], "grid": 3}
    records = {q: Record(id=q, question="?", answer="3", metadata=meta) for q in ("q1", "q2", "q3", "q4")}
    greedy = [{"question_id": "q1", "sample_index": 0, "rationale": "Red objects: 2. Blue objects: 1. 2 + 1 = 3.\nAnswer: 3"},
              {"question_id": "q2", "sample_index": 0, "rationale": "Red objects: 2. Blue objects: 1. 2 + 1 = 4.\nAnswer: 4"},
              {"question_id": "q3", "sample_index": 0, "rationale": "Red objects: 5. Blue objects: 1. 5 + 1 = 6.\nAnswer: 6"}]
    # q4 has no rationale (skipped): it counts, as neither
    assert faithfulness_at_1(records, get_task("synthetic"), greedy) == {"faithful@1": 50.0, "grounded@1": 50.0}
    assert faithfulness_at_1(RECORDS, get_task("generic"), [row("q1", 0, "3")]) == {}
