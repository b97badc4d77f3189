"""The evaluation metrics and the report on hand-made rows (pure: no Ray, no model)."""

from pathlib import Path

import pytest

from r3v_ray.config import load_config
from r3v_ray.evaluation import accuracy_at_1, majority_at_n, oracle_at_n
from r3v_ray.report import table_markdown, write_report
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
