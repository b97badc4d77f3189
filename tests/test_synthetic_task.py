import filecmp
import json
from pathlib import Path

import pytest

from r3v_ray.tasks import Record, RecordError, get_task, load_image
from r3v_ray.tasks.base import read_jsonl_records
from r3v_ray.tasks.synthetic import question_for, solve


def test_answer_changes_when_only_the_image_changes():
    task = get_task("synthetic")
    records = list(task.generate_records("train", 200, seed=0))
    # For every question text, different images give different gold answers somewhere in the set.
    by_question: dict[str, set[str]] = {}
    for r in records:
        by_question.setdefault(r.question, set()).add(r.answer)
    multi = [q for q, answers in by_question.items() if len(answers) > 1]
    assert len(multi) >= len(by_question) // 2
    # And directly: the same question on two layouts.
    q, _ = question_for("sum", "red", "blue")
    a1, _ = solve(["red", "blue", None, None], "sum", "red", "blue")
    a2, _ = solve(["red", "red", "blue", "blue"], "sum", "red", "blue")
    assert q and a1 == "2" and a2 == "4"


def test_questions_need_two_steps_and_rationales_end_in_the_answer_format():
    task = get_task("synthetic")
    for r in task.generate_records("train", 50, seed=1):
        assert r.rationale.count("objects: ") >= 2  # two observations before the operation
        predicted, correct = task.score(r.rationale, r.answer)
        assert correct, (r.id, r.rationale)


def test_two_solution_routes_reach_the_same_answer_from_different_counts():
    colors = ("red", "green", "blue")
    layout = ["red", "red", "green", "blue", "blue", "blue", None, None, None]
    # sum: the asked colours, or all minus the colour not asked about
    assert solve(layout, "sum", "red", "blue", colors, route=0) == ("5", "Red objects: 2. Blue objects: 3. 2 + 3 = 5.\nAnswer: 5")
    assert solve(layout, "sum", "red", "blue", colors, route=1) == ("5", "All objects: 6. Green objects: 1. 6 - 1 = 5.\nAnswer: 5")
    # subtract: all minus the colour, or the sum of the other colours
    assert solve(layout, "subtract", "blue", None, colors, route=0) == ("3", "All objects: 6. Blue objects: 3. 6 - 3 = 3.\nAnswer: 3")
    assert solve(layout, "subtract", "blue", None, colors, route=1) == ("3", "Red objects: 2. Green objects: 1. 2 + 1 = 3.\nAnswer: 3")
    with pytest.raises(ValueError, match="colours"):
        solve(layout, "sum", "red", "blue", route=1)

    one, two = get_task("synthetic", colors=list(colors)), get_task("synthetic", colors=list(colors), paths=2)
    a, b = list(one.generate_records("train", 60, seed=3)), list(two.generate_records("train", 60, seed=3))
    # Same questions, images and answers; only the teacher's route differs, on about half the sum/subtract questions.
    assert [(r.question, r.answer, r.metadata) for r in a] == [(r.question, r.answer, r.metadata) for r in b]
    changed = [y for x, y in zip(a, b) if x.rationale != y.rationale]
    arithmetic = [r for r in a if r.metadata["qtype"] != "compare"]
    assert 0.25 * len(arithmetic) < len(changed) < 0.75 * len(arithmetic)
    assert all(r.metadata["qtype"] != "compare" and two.score(r.rationale, r.answer)[1] for r in changed)
    with pytest.raises(ValueError, match="paths"):
        get_task("synthetic", paths=3)
    with pytest.raises(ValueError, match="at least 3 colors"):
        get_task("synthetic", paths=2, colors=["red", "blue"])


def test_product_questions_are_opt_in_and_their_answer_is_no_count_in_the_image():
    layout = ["red", "red", "blue", "blue", "blue", None, None, None, None]
    assert solve(layout, "product", "red", "blue") == ("6", "Red objects: 2. Blue objects: 3. 2 x 3 = 6.\nAnswer: 6")
    assert "product" not in {r.metadata["qtype"] for r in get_task("synthetic").generate_records("train", 60, seed=0)}
    task = get_task("synthetic", question_types=["product"])
    records = list(task.generate_records("train", 40, seed=0))
    assert {r.metadata["qtype"] for r in records} == {"product"}
    assert all(r.question.startswith("Multiply the number of") and task.score(r.rationale, r.answer)[1] for r in records)
    with pytest.raises(ValueError, match="question_types"):
        get_task("synthetic", question_types=["divide"])


def test_same_seed_gives_byte_identical_data(tmp_path):
    task = get_task("synthetic")
    a = task.write_dataset(tmp_path / "a", 10, 5, seed=7)
    b = task.write_dataset(tmp_path / "b", 10, 5, seed=7)
    c = task.write_dataset(tmp_path / "c", 10, 5, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 + 15
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_train_and_test_splits_differ(synthetic_data_dir):
    task = get_task("synthetic")
    train = list(task.read(synthetic_data_dir, "train"))
    test = list(task.read(synthetic_data_dir, "test"))
    assert len(train) == 24 and len(test) == 12
    assert {r.id for r in train}.isdisjoint({r.id for r in test})
    assert Path(train[0].image).is_file()


@pytest.mark.parametrize(
    "text",
    ["", None, "There are 3 red objects.", "3 + 2 = 5", "Answer:", "Answer: banana", "the answer is 5"],
)
def test_extractor_never_credits_a_rationale_without_an_extractable_answer(text):
    task = get_task("synthetic")
    assert task.extract_answer(text) is None
    assert task.score(text, "5") == (None, False)


def test_extractor_takes_the_last_answer_line():
    task = get_task("synthetic")
    assert task.extract_answer("Answer: 3\nwait.\nAnswer: 5") == "5"
    assert task.extract_answer("so (B).\nAnswer: (b)") == "B"
    assert task.check(task.extract_answer("Answer: no"), "B")


def test_unreadable_image_names_the_record(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(RecordError, match="syn-x-1.*image"):
        load_image(str(bad), record_id="syn-x-1")
    with pytest.raises(RecordError, match="syn-x-2"):
        load_image(str(tmp_path / "missing.png"), record_id="syn-x-2")


def test_record_without_gold_answer_names_the_record(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"id": "q1", "question": "How many?", "answer": "3"}, {"id": "q2", "question": "How many?"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError, match="'q2'.*'answer'"):
        list(read_jsonl_records(path))
    with pytest.raises(RecordError, match="'q3'.*'answer'"):
        Record.from_dict({"id": "q3", "question": "x", "answer": "  "})


# -- faithfulness: does the answer follow the reasoning ------------------------------------------------------------
LAYOUT = ["red", "red", "blue", None, "green", None, None, None, None]  # red 2, blue 1, green 1, all 4
COLOURS = ("red", "green", "blue")


@pytest.mark.parametrize("qtype, c1, c2, rationale, consistent, grounded", [
    ("sum", "red", "blue", "Red objects: 2. Blue objects: 1. 2 + 1 = 3.\nAnswer: 3", True, True),
    # the arithmetic is wrong: the answer does not follow from the stated counts
    ("sum", "red", "blue", "Red objects: 2. Blue objects: 1. 2 + 1 = 4.\nAnswer: 4", False, True),
    # a miscounted colour, reasoned from faithfully: consistent, not grounded
    ("sum", "red", "blue", "Red objects: 3. Blue objects: 1. 3 + 1 = 4.\nAnswer: 4", True, False),
    # the complement route: all objects minus the colours not asked about
    ("sum", "red", "blue", "All objects: 4. Green objects: 1. 4 - 1 = 3.\nAnswer: 3", True, True),
    ("subtract", "red", None, "All objects: 4. Red objects: 2. 4 - 2 = 2.\nAnswer: 2", True, True),
    ("compare", "red", "blue", "Red objects: 2. Blue objects: 1. 2 is more than 1.\nAnswer: A", True, True),
    ("compare", "red", "blue", "Red objects: 2. Blue objects: 1. 2 is not more than 1.\nAnswer: B", False, True),
    # a count the question needs is never stated: nothing to derive the answer from
    ("sum", "red", "blue", "Red objects: 2.\nAnswer: 3", False, True),
    ("sum", "red", "blue", "There are 3.\nAnswer: 3", False, False),
    ("sum", "red", "blue", "Red objects: 2. Blue objects: 1. 2 + 1 = 3.", False, True),  # no answer line
])
def test_faithfulness_checks_the_answer_against_the_stated_counts_and_the_counts_against_the_image(
        qtype, c1, c2, rationale, consistent, grounded):
    task = get_task("synthetic", colors=list(COLOURS))
    record = Record(id="q", question="?", answer="0", choices=["yes", "no"] if qtype == "compare" else None,
                    metadata={"layout": LAYOUT, "qtype": qtype, "colors": [c1, c2], "grid": 3})
    verdict = task.faithfulness(record, rationale)
    assert (verdict.consistent, verdict.grounded) == (consistent, grounded)


def test_every_teacher_rationale_is_faithful_and_grounded():
    task = get_task("synthetic", colors=["red", "green", "blue"], paths=2)
    for record in task.generate_records("train", 60, 0):
        verdict = task.faithfulness(record, record.rationale)
        assert verdict.consistent and verdict.grounded, record.rationale
