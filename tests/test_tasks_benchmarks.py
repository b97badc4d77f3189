"""The paper's benchmarks as tasks: each reader on small files in its public format (malformed records included),
the prompts, and each checker against the benchmark's rules on the tricky cases."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from r3v_ray.cli import main as cli_main
from r3v_ray.tasks import ReadReport, RecordError, get_task, load_image
from r3v_ray.tasks.answers import format_number, parse_number, relaxed_match, tabmwp_normalize
from r3v_ray.tasks.jsonstream import iter_json_document, iter_json_rows


# -- helpers ---------------------------------------------------------------------------------------------------
def png(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path, format="PNG")
    return path


def png_bytes(color=(10, 200, 10)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def write_lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read(task, path, split):
    report = ReadReport()
    records = list(task.read(path, split, report))
    return records, report


def skipped(report: ReadReport) -> dict[str, str]:
    """record id -> field of each skipped record"""
    return {s.record_id: s.field for s in report.skipped}


# -- GeoQA -----------------------------------------------------------------------------------------------------
GEO_CHOICES = ["30°", "45°", "60°", "90°"]


def geoqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "geoqa"
    png(root / "images" / "g1.png")
    png(root / "images" / "g2.png")
    rows = [
        {"id": "g1", "question": "Find angle ABC.", "choices": GEO_CHOICES, "answer": "B", "image": "g1.png"},
        {"id": "g2", "question": "Find angle D.", "choices": GEO_CHOICES, "answer": 2, "image": "g2.png"},
        {"id": "g3", "question": "Missing image file.", "choices": GEO_CHOICES, "answer": "A", "image": "nope.png"},
        {"id": "g4", "question": "No answer.", "choices": GEO_CHOICES, "image": "g1.png"},
        {"id": "g5", "question": "Bad letter.", "choices": GEO_CHOICES, "answer": "E", "image": "g1.png"},
        {"id": "g6", "question": "No image at all.", "choices": GEO_CHOICES, "answer": "A"},
    ]
    write_json(root / "test.jsonl", rows)  # the release's '.jsonl' holds one JSON array
    write_lines(root / "train.jsonl", [rows[0], "{not json", rows[1]])
    return root


def test_geoqa_reads_the_release_array_and_counts_each_malformed_record(tmp_path):
    task = get_task("geoqa")
    records, report = read(task, geoqa_dir(tmp_path), "test")
    assert [r.id for r in records] == ["g1", "g2"]
    assert [r.answer for r in records] == ["B", "C"]  # a 0-based index becomes its letter
    assert records[0].metadata["answer_text"] == "45°" and Path(records[0].image).is_file()
    assert report.read == 2 and report.seen == 6
    assert skipped(report) == {"g3": "image", "g4": "answer", "g5": "answer", "g6": "image"}
    reasons = {s.record_id: s.reason for s in report.skipped}
    assert "nope.png" in reasons["g3"] and "bad choice letter 'E'" in reasons["g5"]


def test_geoqa_json_lines_skip_a_broken_line_by_file_and_line(tmp_path):
    records, report = read(get_task("geoqa"), geoqa_dir(tmp_path), "train")
    assert [r.id for r in records] == ["g1", "g2"]
    assert skipped(report) == {"train.jsonl:2": "<json>"}


def test_geoqa_prompts_list_the_options_and_ask_for_a_letter(tmp_path):
    task = get_task("geoqa")
    record = next(iter(task.read(geoqa_dir(tmp_path), "test")))
    cot = task.cot_prompt(record)
    assert cot.startswith("Find angle ABC.\nChoices: (A) 30° (B) 45° (C) 60° (D) 90°\n")
    assert "step by step" in cot and "Answer: <letter>" in cot
    assert "step by step" not in task.direct_prompt(record)
    assert task.format_answer(record.answer) == "Answer: B"
    assert task.score(task.format_answer(record.answer), record.answer) == ("B", True)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the angle is 45°.\nAnswer: (B)", "B"),
        ("Answer: B", "B"),
        ("Answer: b.", "B"),
        ("Answer: (B) 45°", "B"),
        ("Answer: B: 45°", "B"),
        ("The correct option is (A) at first glance... Answer: A\nWait, recheck.\nAnswer: B", "B"),  # last line wins
        ("Answer:\nB", "B"),
        ("Clearly the answer is (B) here.", None),  # buried mid-rationale, no final Answer line: never a guess
        ("Answer: A triangle has 180°", None),  # the article 'A' is no option letter
        ("Answer: 45°", None),  # option text needs the record's options
    ],
)
def test_multiple_choice_extractor(text, expected):
    task = get_task("geoqa")
    assert task.extract_answer(text) == expected
    assert task.score(text, "B")[1] is (expected == "B")


def test_multiple_choice_with_the_record_maps_option_text_and_refuses_letters_outside_the_options(tmp_path):
    task = get_task("geoqa")
    record = next(iter(task.read(geoqa_dir(tmp_path), "test")))
    assert task.score_record(record, "so 45 degrees.\nAnswer: 45°") == ("B", True)
    assert task.score_record(record, "Answer: 60°.") == ("C", False)
    assert task.score_record(record, "Answer: (E)") == (None, False)  # 4 options: E names none
    assert task.check("(B)", "B") and task.check("B", "(B)") and not task.check("C", "B")
    assert not task.check(None, "B")


# -- TabMWP ----------------------------------------------------------------------------------------------------
def tabmwp_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tabmwp"
    for pid in ("1", "2", "3", "5", "6", "7", "8"):
        png(root / "tables" / f"{pid}.png")
    base = {"table_title": "Sales", "table": "a | b", "grade": 5, "split": "test", "unit": ""}
    problems = {
        "1": dict(base, question="How many in all?", choices=None, answer="1,000", ques_type="free_text",
                  ans_type="integer_number", solution="Add them up: 600 + 400 = 1,000."),
        "2": dict(base, question="Is it open on Friday?", choices=["yes", "no"], answer="no",
                  ques_type="multi_choice", ans_type="boolean_text", solution="Friday is closed."),
        "3": dict(base, question="What fraction is red?", choices=None, answer="0.75", ques_type="free_text",
                  ans_type="decimal_number", solution=None),
        "4": dict(base, question="No table image.", choices=None, answer="3", ques_type="free_text",
                  ans_type="integer_number"),
        "5": dict(base, question="Numeric but not.", choices=None, answer="many", ques_type="free_text",
                  ans_type="integer_number"),
        "6": dict(base, question="No answer.", choices=None, answer="", ques_type="free_text", ans_type="other_text"),
        "7": dict(base, question="Answer not an option.", choices=["red", "blue"], answer="green",
                  ques_type="multi_choice", ans_type="extractive_text"),
        "8": dict(base, question="How long is the rope?", choices=None, answer="5.5", ques_type="free_text",
                  ans_type="decimal_number", unit="cm"),
    }
    write_json(root / "problems_test.json", problems)
    return root


def test_tabmwp_reads_problems_keyed_by_pid_and_skips_with_reasons(tmp_path):
    task = get_task("tabmwp")
    records, report = read(task, tabmwp_dir(tmp_path), "test")
    assert [r.id for r in records] == ["1", "2", "3", "8"]
    assert skipped(report) == {"4": "image", "5": "answer", "6": "answer", "7": "answer"}
    reasons = {s.record_id: s.reason for s in report.skipped}
    assert "not a number" in reasons["5"] and "not one of the choices" in reasons["7"]
    by_id = {r.id: r for r in records}
    assert by_id["2"].answer == "B" and by_id["2"].metadata["answer_text"] == "no"  # option questions: gold letter
    assert by_id["1"].answer == "1,000" and by_id["8"].metadata["unit"] == "cm"


def test_tabmwp_prompts_and_teacher_solution(tmp_path):
    task = get_task("tabmwp")
    by_id = {r.id: r for r in task.read(tabmwp_dir(tmp_path), "test")}
    assert task.cot_prompt(by_id["8"]).startswith("How long is the rope? (Unit: cm)\n")
    assert "Answer: <answer>" in task.cot_prompt(by_id["8"])
    mc = task.cot_prompt(by_id["2"])
    assert "Choices: (A) yes (B) no" in mc and "Answer: <letter>" in mc
    assert "step by step" not in task.direct_prompt(by_id["2"])
    # The release's solution becomes a warm-up rationale that ends in the line the extractor reads.
    assert by_id["1"].rationale.endswith("600 + 400 = 1,000.\nAnswer: 1,000")
    assert task.score(by_id["1"].rationale, by_id["1"].answer) == ("1000", True)
    assert by_id["3"].rationale is None


@pytest.mark.parametrize(
    "predicted, gold, correct",
    [
        ("1000", "1,000", True),
        ("1,000", "1000", True),
        ("$1,000.00", "1000", True),
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("0.7501", "0.75", True),  # numbers are compared to 3 decimals
        ("0.751", "0.75", False),
        ("-3/2", "-1.5", True),
        ("5 apples", "5", True),
        ("Friday.", "friday", True),
        ("7:15 A.M.", "7:15 A.M.", True),
        ("12", "13", False),
    ],
)
def test_tabmwp_checker_uses_the_benchmark_normal_form(predicted, gold, correct):
    task = get_task("tabmwp")
    assert task.score(f"Some work.\nAnswer: {predicted}", gold)[1] is correct


def test_tabmwp_option_questions_by_letter_or_option_text_and_the_unit(tmp_path):
    task = get_task("tabmwp")
    by_id = {r.id: r for r in task.read(tabmwp_dir(tmp_path), "test")}
    mc, rope = by_id["2"], by_id["8"]
    assert task.score_record(mc, "Answer: no") == ("B", True)
    assert task.score_record(mc, "Answer: (B)") == ("B", True)
    assert task.score_record(mc, "Answer: yes") == ("A", False)
    assert task.score_record(mc, "Answer: maybe") == (None, False)
    assert task.score(f"Answer: B", mc.answer) == ("B", True)  # without the record a letter still counts
    assert task.score_record(rope, "Answer: 5.50 cm") == ("5.5", True)
    # The answer buried mid-rationale does not count; the final line does.
    assert task.score("So the answer is 1000.\nAnswer: 900", "1000") == ("900", False)
    assert task.score("So the answer is 1000.", "1000") == (None, False)


# -- ChartQA ---------------------------------------------------------------------------------------------------
def chartqa_dir(tmp_path: Path, split_dir: str = "test") -> Path:
    root = tmp_path / "chartqa"
    png(root / split_dir / "png" / "c1.png")
    png(root / split_dir / "png" / "c2.png")
    write_json(
        root / split_dir / f"{split_dir}_human.json",
        [
            {"imgname": "c1.png", "query": "What is the value in 2019?", "label": "45"},
            {"imgname": "gone.png", "query": "Missing image.", "label": "3"},
            {"imgname": "c1.png", "query": "No label.", "label": ""},
        ],
    )
    augmented = [{"imgname": "c2.png", "query": "Is it rising?", "label": "Yes"}]
    write_json(root / split_dir / f"{split_dir}_augmented.json", augmented)
    return root


def test_chartqa_reads_human_and_augmented_files(tmp_path):
    task = get_task("chartqa")
    records, report = read(task, chartqa_dir(tmp_path), "test")
    assert [r.id for r in records] == ["test-human-00000", "test-augmented-00000"]
    assert [r.metadata["source"] for r in records] == ["human", "augmented"]
    assert skipped(report) == {"test-human-00001": "image", "test-human-00002": "label"}
    assert task.cot_prompt(records[0]).startswith("What is the value in 2019?\n")
    only_human, _ = read(get_task("chartqa", sources=["human"]), chartqa_dir(tmp_path), "test")
    assert [r.id for r in only_human] == ["test-human-00000"]
    with pytest.raises(ValueError, match="sources"):
        get_task("chartqa", sources=["synthetic"])


def test_chartqa_val_split_is_found_under_its_other_names(tmp_path):
    records, _ = read(get_task("chartqa"), chartqa_dir(tmp_path, split_dir="val"), "dev")
    assert len(records) == 2


@pytest.mark.parametrize(
    "predicted, gold, correct",
    [
        ("105", "100", True),  # exactly 5%: inclusive
        ("95", "100", True),
        ("105.01", "100", False),
        ("94.99", "100", False),
        ("0.315", "0.3", True),  # 5% of 0.3 exactly; binary floats would say 5.000000000000004%
        ("0.3151", "0.3", False),
        ("1,000", "1000", True),
        ("-52.5", "-50", True),
        ("Yes", "yes", True),
        ("yes.", "Yes", True),
        ("Paris", "London", False),
        ("45%", "45", False),  # the scorer reads '45%' as 0.45
        ("45%", "0.45", True),
        ("0.0", "0", True),
        ("2015", "2014", True),  # the benchmark's rule treats years as numbers, within 5%
    ],
)
def test_chartqa_relaxed_accuracy(predicted, gold, correct):
    task = get_task("chartqa")
    assert task.score(f"Reading the chart.\nAnswer: {predicted}", gold)[1] is correct
    assert relaxed_match(predicted, gold) is correct


def test_chartqa_extracted_answers_vote_together_when_they_are_the_same_answer():
    task = get_task("chartqa")
    same = ["Answer: 1,000", "Answer: 1000.0", "Answer: 1000."]
    assert {task.extract_answer(t) for t in same} == {"1000"}
    assert task.extract_answer("Answer: YES") == task.extract_answer("Answer: yes")


# -- CLEVR-Math ------------------------------------------------------------------------------------------------
def clevr_dir(tmp_path: Path) -> Path:
    root = tmp_path / "clevr-math"
    png(root / "clevr_math_imgs" / "CLEVR_test_000001.png")
    img = "CLEVR_test_000001.png"
    write_json(
        root / "clevr_test.json",
        [
            {"filename": img, "question": "Subtract all red cubes. How many objects are left?", "answer": 3},
            {"filename": img, "question": "Add 2 balls. How many balls?", "answer": "5"},
            {"filename": img, "question": "Non-numeric gold.", "answer": "many"},
            {"filename": img, "question": "Not an integer.", "answer": "2.5"},
            {"filename": "missing.png", "question": "Missing image.", "answer": 1},
            {"filename": img, "question": "", "answer": 1},
        ],
    )
    return root


def test_clevr_math_reads_the_release_list_and_needs_integer_answers(tmp_path):
    task = get_task("clevr_math")
    records, report = read(task, clevr_dir(tmp_path), "test")
    assert [(r.id, r.answer) for r in records] == [("clevr-test-000000", "3"), ("clevr-test-000001", "5")]
    assert skipped(report) == {
        "clevr-test-000002": "answer",
        "clevr-test-000003": "answer",
        "clevr-test-000004": "image",
        "clevr-test-000005": "question",
    }
    assert "Answer: <number>" in task.cot_prompt(records[0])


@pytest.mark.parametrize(
    "text, extracted, correct",
    [
        ("3 objects remain.\nAnswer: 3", "3", True),
        ("Answer: three", "3", True),
        ("Answer: 3.0", "3", True),
        ("Answer: +3.", "3", True),
        ("Answer: 2.5", None, False),
        ("Answer: 4", "4", False),
        ("There are 3 left.", None, False),
        ("Answer: 3 objects... no wait.\nAnswer: 4", "4", False),
        # release rationales give a unit after the integer: the one integer of the line is the answer
        ("Answer: 3 objects", "3", True),
        ("Answer: 3 cubes are left.", "3", True),
        ("Answer: three objects", "3", True),
        ("Answer: 3, I think", "3", True),
        ("Answer: 2.5 objects", None, False),
        ("Answer: objects: 3", "3", True),  # a short line around exactly one number
    ],
)
def test_clevr_math_integer_equality(text, extracted, correct, clevr_record):
    task = get_task("clevr_math")
    assert task.score(text, "3") == (extracted, correct)
    assert task.score_record(clevr_record, text) == (extracted, correct)  # the path labeling and serving take


@pytest.fixture(scope="module")
def clevr_record(tmp_path_factory):
    """A record read from a one-question CLEVR-Math release (gold 3)."""
    root = tmp_path_factory.mktemp("clevr-math")
    png(root / "clevr_math_imgs" / "a.png")
    write_json(root / "clevr_test.json", [{"filename": "a.png", "question": "How many?", "answer": 3}])
    return next(iter(get_task("clevr_math").read(root, "test")))


def test_image_paths_written_with_backslashes_resolve(tmp_path):
    """Release files made on Windows name images 'images\\x.png'; on POSIX they resolve with '/' separators."""
    root = tmp_path / "clevr-math"
    png(root / "clevr_math_imgs" / "sub" / "CLEVR_test_000007.png")
    write_json(root / "clevr_test.json", [{"filename": "sub\\CLEVR_test_000007.png", "question": "How many?", "answer": 2}])
    (record,) = list(get_task("clevr_math").read(root, "test"))
    assert Path(record.image) == (root / "clevr_math_imgs" / "sub" / "CLEVR_test_000007.png").absolute()
    assert load_image(record.image).size == (4, 4)

    generic = tmp_path / "generic"
    png(generic / "images" / "a.png")
    write_lines(generic / "train.jsonl", [{"id": "g1", "question": "Q?", "answer": "1", "image": "images\\a.png"}])
    (record,) = list(get_task("generic").read(generic, "train"))
    assert Path(record.image).resolve() == (generic / "images" / "a.png").resolve()


# -- M3CoT -----------------------------------------------------------------------------------------------------
def m3cot_dir(tmp_path: Path) -> Path:
    root = tmp_path / "m3cot"
    png(root / "images" / "m1.png")
    base = {"domain": "science", "topic": "physics", "category": "cat", "split": "dev"}
    rows = [
        dict(base, id="m1", question="Which force acts?", choices=["gravity", "magnetism", "friction"], answer="A",
             context="A ball falls.", rationale="The ball falls because of gravity.", image_path="images/m1.png"),
        dict(base, id="m2", question="Missing image.", choices=["a", "b"], answer="A", context="",
             image_path="images/m2.png"),
        dict(base, id="m3", question="Bad letter.", choices=["x", "y", "z"], answer="F", context="",
             image="images/m1.png"),
        '{"id": "m4", "question": broken',
    ]
    write_lines(root / "dev.jsonl", rows)
    return root


def test_m3cot_reads_json_lines_with_context_and_rationale(tmp_path):
    task = get_task("m3cot")
    records, report = read(task, m3cot_dir(tmp_path), "validation")  # 'dev' in the GitHub release
    assert [r.id for r in records] == ["m1"]
    assert skipped(report) == {"m2": "image", "m3": "answer", "dev.jsonl:4": "<json>"}
    record = records[0]
    assert task.question_text(record).startswith("Context: A ball falls.\nWhich force acts?\nChoices: (A) gravity")
    assert record.rationale.endswith("because of gravity.\nAnswer: A")
    assert task.score(record.rationale, record.answer) == ("A", True)
    assert task.score_record(record, "Answer: friction") == ("C", False)
    assert record.metadata["domain"] == "science"


def test_m3cot_hub_snapshot_through_datasets_with_embedded_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "M3CoT"
    (root / "data").mkdir(parents=True)
    rows = {
        "id": ["h1", "h2"],
        "question": ["What is shown?", "Bad."],
        "choices": [["a cat", "a dog"], ["x"]],
        "answer": ["B", "C"],
        "context": ["", ""],
        "rationale": ["It barks.", ""],
        "domain": ["commonsense", "commonsense"],
        "topic": ["animals", "animals"],
        "image": [{"bytes": png_bytes(), "path": "h1.png"}, {"bytes": png_bytes(), "path": "h2.png"}],
    }
    pq.write_table(pa.table(rows), root / "data" / "test-00000-of-00001.parquet")
    task = get_task("m3cot", image_cache_dir=str(tmp_path / "cache"))
    records, report = read(task, root, "test")
    assert [r.id for r in records] == ["h1"] and skipped(report) == {"h2": "answer"}
    assert Path(records[0].image).parent == tmp_path / "cache"
    assert load_image(records[0].image, "h1").size == (4, 4)
    assert task.score_record(records[0], "It barks.\nAnswer: a dog") == ("B", True)


# -- generic ---------------------------------------------------------------------------------------------------
def test_generic_jsonl_of_the_common_record(tmp_path):
    png(tmp_path / "data" / "images" / "x.png")
    write_lines(
        tmp_path / "data" / "test.jsonl",
        [
            {"id": "q1", "question": "How many?", "answer": "1,000", "image": "images/x.png"},
            {"id": "q2", "question": "Which?", "answer": "dog", "choices": ["cat", "dog"], "image": "images/x.png"},
            {"question": "No id.", "answer": "1", "image": "images/x.png"},
            {"id": "q4", "question": "No image.", "answer": "1"},
            {"id": "q5", "question": "Bad letter.", "answer": "(D)", "choices": ["cat", "dog"],
             "image": "images/x.png"},
        ],
    )
    task = get_task("generic")
    records, report = read(task, tmp_path / "data", "test")
    assert [(r.id, r.answer) for r in records] == [("q1", "1,000"), ("q2", "B")]
    assert skipped(report) == {"<missing id>": "id", "q4": "image", "q5": "answer"}
    assert task.score("Answer: 1000", "1,000") == ("1000", True)
    assert task.score("Answer: 3/4", "0.75") == ("0.75", True)
    assert task.score("Answer: (B)", "B") == ("B", True)
    assert task.score_record(records[1], "Answer: dog") == ("B", True)
    lenient, _ = read(get_task("generic", require_image=False), tmp_path / "data", "test")
    assert [r.id for r in lenient] == ["q1", "q2", "q4"]


def test_generic_parquet_with_renamed_columns_and_embedded_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "qid": ["p1", "p2"],
            "query": ["Value?", "No label."],
            "label": ["7", None],
            "image": [{"bytes": png_bytes(), "path": None}, {"bytes": png_bytes(), "path": None}],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    task = get_task("generic", columns={"id": "qid", "question": "query", "answer": "label"})
    records, report = read(task, tmp_path, "train")
    assert [r.id for r in records] == ["p1"] and skipped(report) == {"p2": "answer"}
    assert load_image(records[0].image, "p1").size == (4, 4)
    with pytest.raises(ValueError, match="unknown fields"):
        get_task("generic", columns={"label": "x"})


def test_generic_local_datasets_directory(tmp_path):
    import datasets

    features = datasets.Features(
        {"id": datasets.Value("string"), "question": datasets.Value("string"), "answer": datasets.Value("string"),
         "image": datasets.Image()}
    )
    data = {"id": ["d1", "d2"], "question": ["How many?", "How many?"], "answer": ["2", "3"],
            "image": [{"bytes": png_bytes(), "path": None}, {"bytes": png_bytes((1, 2, 3)), "path": None}]}
    ds = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(data, features=features)})
    ds.save_to_disk(str(tmp_path / "saved"))
    records, report = read(get_task("generic"), tmp_path / "saved", "dev")  # 'dev' finds 'validation'
    assert [r.id for r in records] == ["d1", "d2"] and report.read == 2
    assert load_image(records[1].image, "d2").getpixel((0, 0)) == (1, 2, 3)


# -- shared machinery ------------------------------------------------------------------------------------------
def test_read_without_a_report_still_iterates_and_logs_the_skips(tmp_path, caplog):
    task = get_task("geoqa")
    with caplog.at_level(logging.WARNING, logger="r3v_ray.tasks.base"):
        records = list(task.read(geoqa_dir(tmp_path), "test"))
    assert len(records) == 2
    assert "2 read, 4 skipped" in caplog.text and "g5" in caplog.text


def test_read_report_summary_and_dict():
    report = ReadReport(source="x")
    report.read = 3
    report.skip("a", "image", "missing")
    report.skip_error(RecordError("b", "answer", "missing gold answer"))
    report.skip("c", "image", "file not found")
    assert report.summary() == "x: 3 read, 3 skipped (image: 2, answer: 1)"
    assert report.to_dict()["skips"][1] == {"record_id": "b", "field": "answer", "reason": "missing gold answer"}


def test_json_documents_stream_in_chunks_and_name_where_they_are_cut(tmp_path):
    doc = {str(i): {"question": "q" * (i % 40), "answer": 10**20 + i, "x": [1.5, None, True]} for i in range(300)}
    path = write_json(tmp_path / "problems.json", doc)
    assert dict(iter_json_document(path, chunk_chars=7)) == doc  # values that straddle chunk ends, big numbers
    array = write_json(tmp_path / "a.json", list(doc.values()))
    assert [row for _, row in iter_json_rows(array)] == list(doc.values())
    cut = tmp_path / "cut.json"
    cut.write_text(path.read_text()[:-40])
    *complete, (key, damage) = list(iter_json_document(cut, chunk_chars=64))
    assert dict(complete) == {k: doc[k] for k in list(doc)[:299]} and key == "299"
    assert damage.where == "cut.json['299']" and "line" in damage.problem and "byte" in damage.problem
    trailing = tmp_path / "trailing.json"
    trailing.write_text("[1, 2] [3]")
    *rows, (_, damage) = list(iter_json_document(trailing))
    assert rows == [(0, 1), (1, 2)] and "after the top-level" in damage.problem


def test_missing_split_file_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="problems_test.json"):
        list(get_task("tabmwp").read(tmp_path, "test"))
    with pytest.raises(FileNotFoundError, match="test/test_human.json"):
        list(get_task("chartqa").read(tmp_path, "test"))
    with pytest.raises(FileNotFoundError, match=r"clevr_test.json.*`datasets`"):
        list(get_task("clevr_math").read(tmp_path, "test"))


def test_number_helpers():
    assert parse_number("1,000") == 1000 and parse_number("1,00") is None and parse_number("3/0") is None
    assert format_number(parse_number("3/4")) == "0.75" and format_number(parse_number("-2.50")) == "-2.5"
    assert tabmwp_normalize("0.3333") == tabmwp_normalize("1/3") == "0.333"


def test_synthetic_task_reads_with_a_report(synthetic_data_dir):
    report = ReadReport()
    records = list(get_task("synthetic").read(synthetic_data_dir, "test", report))
    assert report.read == len(records) == 12 and not report.skipped


# -- CLI -------------------------------------------------------------------------------------------------------
def test_cli_data_inspect_prints_counts_prompt_and_answers(tmp_path, capsys):
    root = tabmwp_dir(tmp_path)
    assert cli_main(["data", "inspect", "--task", "tabmwp", "--path", str(root), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "4 read, 4 skipped (answer: 3, image: 1)" in out
    assert "skipped 5: answer: 'many' is not a number" in out
    assert "How many in all?" in out and "-> Answer: 1,000" in out
    assert "answers: 4 distinct over 4 records" in out
    assert cli_main(["data", "inspect", "--task", "tabmwp", "--path", str(tmp_path / "none")]) == 2
    assert "problems_train.json" in capsys.readouterr().err
    assert cli_main(["data", "inspect", "--task", "chartqa", "--path", str(root), "--param", "sources=[x]"]) == 2


@pytest.mark.parametrize("name", ["geoqa", "tabmwp", "chartqa", "clevr_math", "m3cot", "generic"])
def test_normal_forms_are_stable(name):
    # check() normalises an already extracted answer again: that must not change it.
    task = get_task(name)
    for text in ["1,000", "3/4", "(B)", "B. 45°", "7:15 A.M.", "Yes.", "45%", "$5.50", "three", "-2.50", "5 apples"]:
        once = task.normalize(text)
        if once is not None:
            assert task.normalize(once) == once, (text, once)
            assert task.check(once, text), (text, once)


def test_generic_json_keyed_by_id_and_m3cot_paths_from_the_repository_root(tmp_path):
    png(tmp_path / "images" / "k.png")
    write_json(tmp_path / "test.json", {"k1": {"question": "How many?", "answer": "4", "image": "images/k.png"},
                                        "k2": {"question": "No answer.", "image": "images/k.png"}})
    records, report = read(get_task("generic"), tmp_path, "test")
    assert [r.id for r in records] == ["k1"] and skipped(report) == {"k2": "answer"}
    # M3CoT's own files name images from the repository root ('data/images/<id>.png').
    root = tmp_path / "M3CoT" / "data"
    png(root / "images" / "r1.png")
    row = {"id": "r1", "question": "Which?", "choices": ["a", "b"], "answer": "B", "image": "data/images/r1.png"}
    write_lines(root / "test.jsonl", [row])
    records, _ = read(get_task("m3cot"), root, "test")
    assert records[0].image == str(root / "images" / "r1.png")


def test_image_paths_are_absolute_when_the_data_path_is_relative(tmp_path, monkeypatch):
    geoqa_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    records, _ = read(get_task("geoqa"), "geoqa", "test")
    assert all(Path(r.image).is_absolute() and Path(r.image).is_file() for r in records)
