"""Data files that cannot break a run (docs/data.md): damaged files give up only what is damaged, by name; images
outside the data directory and images too large to decode are skipped before decoding; duplicate ids are counted;
what comes from a file is printed escaped; `r3v data inspect` fails only when nothing could be read."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image

from r3v_ray.cli import main as cli_main
from r3v_ray.config import RunConfig
from r3v_ray.tasks import ReadReport, get_task
from r3v_ray.tasks.base import printable


def png(path: Path, size=(4, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, format="PNG")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height, with no pixel data: what a 657 KB 13,000 x 13,000 PNG shows a
    reader before decoding, at none of its cost."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def geoqa_rows(n: int) -> list[dict]:
    return [{"id": f"g{i}", "question": f"Find angle {i}.", "choices": ["30°", "45°"], "answer": "A",
             "image": "g.png"} for i in range(n)]


def geoqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "geoqa"
    png(root / "images" / "g.png")
    return root


def read(task, path, split, **checks):
    report = ReadReport(source=f"{task.name} {split}")
    return list(task.read(path, split, report, **checks)), report


# -- damaged files -----------------------------------------------------------------------------------------------
def test_a_json_array_cut_mid_record_keeps_the_records_before_and_names_the_cut(tmp_path):
    root = geoqa_dir(tmp_path)
    text = json.dumps(geoqa_rows(5), indent=1)
    (root / "test.jsonl").write_text(text[: text.index('"g4"') + 8])
    records, report = read(get_task("geoqa"), root, "test")
    assert [r.id for r in records] == ["g0", "g1", "g2", "g3"]
    (skip,) = report.skipped
    assert skip.record_id == "test.jsonl[4]" and skip.field == "<json>"
    assert "line" in skip.reason and "byte" in skip.reason and "rest of the file is not read" in skip.reason


def test_a_keyed_document_cut_mid_record_names_the_record_by_its_key(tmp_path):
    root = tmp_path / "tabmwp"
    problems = {}
    for pid in ("11", "12", "13"):
        png(root / "tables" / f"{pid}.png")
        problems[pid] = {"question": "How many?", "choices": None, "answer": "3", "ques_type": "free_text",
                         "ans_type": "integer_number", "unit": ""}
    text = json.dumps(problems)
    (root / "problems_test.json").write_text(text[: text.index('"13"') + 20])
    records, report = read(get_task("tabmwp"), root, "test")
    assert [r.id for r in records] == ["11", "12"]
    assert [s.record_id for s in report.skipped] == ["problems_test.json['13']"]


def test_chartqa_test_human_cut_mid_record_keeps_the_records_before(tmp_path):
    root = tmp_path / "chartqa"
    png(root / "test" / "png" / "c.png")
    rows = [{"imgname": "c.png", "query": f"Value {i}?", "label": str(i)} for i in range(4)]
    text = json.dumps(rows)
    (root / "test" / "test_human.json").write_text(text[:-20])
    (root / "test" / "test_augmented.json").write_text("[]")
    records, report = read(get_task("chartqa"), root, "test")
    assert [r.answer for r in records] == ["0", "1", "2"]
    assert [s.record_id for s in report.skipped] == ["test_human.json[3]"]


def test_invalid_utf8_is_one_named_skip_in_json_lines_and_in_a_json_array(tmp_path):
    root = geoqa_dir(tmp_path)
    lines = [json.dumps(r).encode() for r in geoqa_rows(3)]
    lines[1] = lines[1].replace(b"Find", b"F\xffind")
    (root / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "test.jsonl").write_bytes(b"[" + b",\n".join(lines) + b"]")
    for split, where in (("train", "train.jsonl:2"), ("test", "test.jsonl[1]")):
        records, report = read(get_task("geoqa"), root, split)
        assert [r.id for r in records] == ["g0", "g2"]
        (skip,) = report.skipped
        assert (skip.record_id, skip.field) == (where, "<json>") and "invalid UTF-8 (byte 0xff)" in skip.reason


def test_deep_nesting_is_a_named_skip_in_all_three_json_readers(tmp_path):
    deep = '{"id": "deep", "question": ' + "[" * 200_000 + "}"
    good = json.dumps(geoqa_rows(1)[0])
    root = geoqa_dir(tmp_path)
    (root / "train.jsonl").write_text(good + "\n" + deep + "\n")  # JSON lines
    (root / "test.jsonl").write_text("[" + good + ",\n" + deep + "]")  # a JSON array
    for split, where in (("train", "train.jsonl:2"), ("test", "test.jsonl[1]")):
        records, report = read(get_task("geoqa"), root, split)
        assert [r.id for r in records] == ["g0"]
        assert [(s.record_id, "nested too deeply" in s.reason) for s in report.skipped] == [(where, True)]
    tab = tmp_path / "tabmwp"
    png(tab / "tables" / "1.png")
    (tab / "problems_test.json").write_text('{"1": {"question": ' + "[" * 200_000 + "}")
    records, report = read(get_task("tabmwp"), tab, "test")  # a document keyed by id
    assert records == [] and [s.record_id for s in report.skipped] == ["problems_test.json['1']"]


def test_nesting_that_parses_but_is_deeper_than_any_record_is_skipped(tmp_path):
    root = geoqa_dir(tmp_path)
    rows = geoqa_rows(2)
    rows[0]["question"] = json.loads("[" * 100 + "]" * 100)
    (root / "test.jsonl").write_text(json.dumps(rows))
    records, report = read(get_task("geoqa"), root, "test")
    assert [r.id for r in records] == ["g1"] and "deeper than 64 levels" in report.skipped[0].reason


def test_the_built_in_reader_skips_a_bad_line_instead_of_failing_the_split(tmp_path):
    rows = [{"id": "q1", "question": "How many?", "answer": "3"}, {"id": "q2", "question": "How many?"}]
    (tmp_path / "train.jsonl").write_bytes(
        b"\n".join(json.dumps(r).encode() for r in rows) + b"\n{broken\n\xff\xfe\n")
    records, report = read(get_task("synthetic"), tmp_path, "train")
    assert [r.id for r in records] == ["q1"]
    assert {s.record_id: s.field for s in report.skipped} == {"q2": "answer", "train.jsonl:3": "<json>",
                                                               "train.jsonl:4": "<json>"}


# -- images ------------------------------------------------------------------------------------------------------
def _with_images(tmp_path: Path, images: dict[str, str]) -> Path:
    root = geoqa_dir(tmp_path)
    rows = geoqa_rows(len(images))
    for row, (rid, image) in zip(rows, images.items()):
        row["id"], row["image"] = rid, image
    (root / "test.jsonl").write_text(json.dumps(rows))
    return root


def test_images_outside_the_data_directory_are_skipped_by_name(tmp_path):
    outside = png(tmp_path / "outside" / "secret.png")
    root = _with_images(tmp_path, {"inside": "g.png", "relative": "../../outside/secret.png",
                                   "absolute": str(outside), "passwd": "/etc/passwd"})
    records, report = read(get_task("geoqa"), root, "test")
    assert [r.id for r in records] == ["inside"]
    reasons = {s.record_id: s.reason for s in report.skipped}
    assert set(reasons) == {"relative", "absolute", "passwd"}
    assert all("outside the data directory" in r and "allow_external_images" in r for r in reasons.values())


def test_a_symlink_out_of_the_data_directory_is_outside(tmp_path):
    png(tmp_path / "elsewhere" / "x.png")
    root = _with_images(tmp_path, {"linked": "link.png"})
    (root / "images" / "link.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    records, report = read(get_task("geoqa"), root, "test")
    assert records == [] and "resolves to" in report.skipped[0].reason


def test_allow_external_images_reads_them(tmp_path):
    outside = png(tmp_path / "outside" / "secret.png")
    root = _with_images(tmp_path, {"inside": "g.png", "absolute": str(outside)})
    records, report = read(get_task("geoqa"), root, "test", allow_external_images=True)
    assert [r.id for r in records] == ["inside", "absolute"] and not report.skipped


def test_an_image_over_the_pixel_limit_is_skipped_from_its_header_before_decoding(tmp_path):
    root = geoqa_dir(tmp_path)
    png_header_only(root / "images" / "huge.png", 13_000, 13_000)
    png(root / "images" / "wide.png", size=(40, 30))
    rows = geoqa_rows(3)
    rows[1]["image"], rows[2]["image"] = "huge.png", "wide.png"
    (root / "test.jsonl").write_text(json.dumps(rows))
    default = RunConfig().task.max_image_pixels
    records, report = read(get_task("geoqa"), root, "test", max_image_pixels=default)
    assert [r.id for r in records] == ["g0", "g2"]
    assert "13000x13000 = 169000000 pixels, over task.max_image_pixels" in report.skipped[0].reason
    records, report = read(get_task("geoqa"), root, "test", max_image_pixels=1000)
    assert [r.id for r in records] == ["g0"] and [s.record_id for s in report.skipped] == ["g1", "g2"]


def test_the_image_limits_are_part_of_the_digest():
    base = RunConfig()
    assert RunConfig(task={"max_image_pixels": base.task.max_image_pixels}).digest() == base.digest()
    assert RunConfig(task={"allow_external_images": True}).digest() != base.digest()
    assert RunConfig(task={"max_image_pixels": 10}).digest() != base.digest()


# -- ids ---------------------------------------------------------------------------------------------------------
def test_duplicate_ids_are_counted_and_the_first_is_kept(tmp_path):
    root = geoqa_dir(tmp_path)
    rows = geoqa_rows(3)
    rows[2]["id"], rows[2]["question"] = "g0", "A second g0."
    (root / "test.jsonl").write_text(json.dumps(rows))
    records, report = read(get_task("geoqa"), root, "test")
    assert [(r.id, r.question) for r in records] == [("g0", "Find angle 0."), ("g1", "Find angle 1.")]
    assert report.skipped_by_field() == {"id": 1} and "duplicate id" in report.skipped[0].reason


def test_printable_escapes_terminal_control_sequences():
    assert printable("q\x1b[2J1") == "q\\x1b[2J1"
    assert printable("a\nb\u202e") == "a\\nb\\u202e"
    assert printable("a\nb", newlines=True) == "a\nb"


# -- r3v data inspect --------------------------------------------------------------------------------------------
def test_inspect_lists_skips_escaped_and_exits_0_when_some_records_read(tmp_path, capsys):
    root = geoqa_dir(tmp_path)
    rows = geoqa_rows(2)
    rows[1]["id"] = "evil\x1b[2J"
    rows[1]["image"] = "/etc/passwd"
    text = json.dumps(rows)
    (root / "test.jsonl").write_text(text + "\n")
    assert cli_main(["data", "inspect", "--task", "geoqa", "--path", str(root), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2J" in out and "1 read, 1 skipped" in out


def test_inspect_exits_non_zero_and_says_which_split_when_nothing_could_be_read(tmp_path, capsys):
    root = geoqa_dir(tmp_path)
    (root / "test.jsonl").write_bytes(b'[{"id": "g0", "question": "\xff')
    assert cli_main(["data", "inspect", "--task", "geoqa", "--path", str(root), "--split", "test"]) == 1
    captured = capsys.readouterr()
    assert "test.jsonl[0]" in captured.out and "nothing could be read from geoqa test" in captured.err
    assert "Traceback" not in captured.out + captured.err
