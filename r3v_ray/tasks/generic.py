"""Any dataset in the common record (or a rename away from it), from JSON lines, a JSON array, parquet, or a local
`datasets` directory.

Where: `path` is a file (`.jsonl`, `.json`, `.parquet`), or a directory holding `<split>.jsonl`, `<split>.json` or
`<split>.parquet` (dev/validation/val are one split), or else a local `datasets` directory (a `save_to_disk` folder,
or a folder of data files such as a downloaded hub snapshot), streamed; `format` forces one of these. A `.json`
file is a JSON array, JSON lines, or one object keyed by id.
Rows: {"id", "question", "answer", "image", "choices", "rationale", "metadata"}; `columns` maps these fields to the
source's column names (e.g. {"question": "query", "answer": "label", "image": "imgname"}). An image is a path
(absolute, or relative to the data file's directory, `image_dir` or `<dir>/images`) or embedded bytes (as parquet and
`datasets` store them), written once under `image_cache_dir` (default `<dir>/.r3v-image-cache/generic/<split>`).

Scoring (docs/data.md): with choices, by the one option letter the answer names (the gold may be given as a
letter, a 0-based index or the option's text); otherwise exact match after normalisation: a numeric gold against
the one number the answer line states, by value ('1,000' = '1000', '3/4' = '0.75'), text case-insensitively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from r3v_ray.tasks.answers import (
    fold_text,
    format_number,
    letter_index,
    number_answer,
    option_answer,
    parse_number,
    strip_lead_in,
)
from r3v_ray.tasks.base import ReadReport, Record, RecordError, Task, last_answer_text
from r3v_ray.tasks.jsonstream import first_char, iter_json_document, iter_json_rows
from r3v_ray.tasks.multiple_choice import gold_letter
from r3v_ray.tasks.sources import (
    build_records,
    find_split_file_or_none,
    image_name,
    iter_datasets_rows,
    iter_parquet_rows,
    require_image,
)

FIELDS = ("id", "question", "answer", "image", "choices", "rationale", "metadata")
FORMATS = ("auto", "jsonl", "json", "parquet", "datasets")
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def _is_keyed_document(path: Path) -> bool:
    """A JSON object of records keyed by id ({"q1": {...}, ...}) rather than JSON lines: its first value is an
    object (a JSON-lines record's first value is a field such as its id)."""
    if first_char(path) != "{":
        return False
    pairs = iter_json_document(path)
    try:
        first = next(pairs, None)
    finally:
        pairs.close()
    return first is not None and isinstance(first[1], dict)


def _keyed_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for key, row in iter_json_document(path):
        yield str(key), (dict(row, id=row.get("id") or key) if isinstance(row, dict) else row)


class GenericTask(Task):
    name = "generic"

    def __init__(
        self,
        format: str = "auto",
        columns: dict[str, str] | None = None,
        image_dir: str | None = None,
        image_cache_dir: str | None = None,
        require_image: bool = True,
    ):
        if format not in FORMATS:
            raise ValueError(f"generic task: format must be one of {list(FORMATS)}, got {format!r}")
        unknown = set(columns or {}) - set(FIELDS)
        if unknown:
            raise ValueError(f"generic task: columns maps unknown fields {sorted(unknown)}; fields: {list(FIELDS)}")
        self.format, self.columns = format, dict(columns or {})
        self.image_dir, self.image_cache_dir, self.require_image = image_dir, image_cache_dir, require_image

    # -- scoring ---------------------------------------------------------------------------------
    def normalize(self, answer: str) -> str | None:
        text = strip_lead_in(answer)
        stripped = text.strip("().: ")
        if len(stripped) == 1 and stripped.isalpha():  # an option letter: 'B', '(b)', 'B.'
            return stripped.upper()
        number = parse_number(text.rstrip("."))
        if number is not None:
            return format_number(number)
        return fold_text(text) or None

    def extract_for(self, record: Record, text: str | None) -> str | None:
        content = last_answer_text(text)
        if content is None or record.choices:
            return option_answer(content, record.choices)
        if record.answer and parse_number(record.answer) is not None:  # a number: the one the answer line states
            number = number_answer(content)
            return None if number is None else self.normalize(number)
        return self.normalize(content)

    # -- data ------------------------------------------------------------------------------------
    def _rows(self, path: Path, split: str) -> tuple[Iterator[tuple[str, Any]], Path]:
        """The rows of the split and the directory relative image paths start from."""
        fmt, data_file = self.format, None
        if path.is_file():
            data_file = path
            fmt = _SUFFIX_FORMAT.get(path.suffix, "jsonl") if fmt == "auto" else fmt
        elif fmt != "datasets":
            patterns = {"auto": ("{split}.jsonl", "{split}.json", "{split}.parquet"), "jsonl": ("{split}.jsonl",),
                        "json": ("{split}.json",), "parquet": ("{split}.parquet",)}[fmt]
            data_file = find_split_file_or_none(path, patterns, split)
            if data_file is None and fmt != "auto":
                raise FileNotFoundError(f"generic: no {fmt} file for split {split!r} in {path}")
            if data_file is not None:
                fmt = _SUFFIX_FORMAT[data_file.suffix]
        if data_file is None:
            return iter_datasets_rows(path, split), path
        if fmt == "parquet":
            return iter_parquet_rows(data_file), data_file.parent
        if data_file.suffix == ".json" and _is_keyed_document(data_file):
            return _keyed_rows(data_file), data_file.parent
        return iter_json_rows(data_file), data_file.parent

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        rows, base = self._rows(path, split)
        image_dirs = ([Path(self.image_dir)] if self.image_dir else []) + [base, base / "images"]
        cache = Path(self.image_cache_dir) if self.image_cache_dir else base / ".r3v-image-cache" / "generic" / split

        def build(index: int, row: dict) -> Record:
            mapped = dict(row)
            for field_name, column in self.columns.items():
                mapped[field_name] = row.get(column)
            rid = str(mapped.get("id") or f"{split}[{index}]")
            mapped["image"] = image_name(mapped.get("image"), rid, cache)
            record = Record.from_dict(mapped)  # refuses a missing id, question or answer, naming the record
            if record.choices:
                record.choices = [str(c).strip() for c in record.choices]
                record.answer = gold_letter(mapped.get("answer"), record.choices, rid)
                record.metadata.setdefault("answer_text", record.choices[letter_index(record.answer)])
            if record.image:
                record.image = require_image(rid, record.image, image_dirs)
            elif self.require_image:
                raise RecordError(rid, "image", "missing")
            return record

        yield from build_records(rows, build, report)
