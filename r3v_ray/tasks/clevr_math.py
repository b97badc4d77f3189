"""CLEVR-Math: arithmetic word problems over CLEVR scenes ("Subtract all red cubes. How many objects are left?").

Files: the R3V release's `<path>/clevr_<split>.json` (or `<path>/<split>.json` / `.jsonl`), a JSON array of
{"filename", "question", "answer"} with images in `<path>/clevr_math_imgs/` (or `<path>/images/`); or, when there
is no such file, the Hugging Face release ({"id", "question", "label", "image"}) read from the local directory
through `datasets`, embedded images written once under `image_cache_dir`. Rows without an id are numbered
('clevr-test-000012'). Scored by integer equality on the one integer the answer line states ('Answer: 7 objects'
and 'Answer: 9 - 2 = 7' are 7, 'Answer: 7 or 8' is none); a gold answer that is not an integer is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from r3v_ray.tasks.answers import number_answer, parse_integer
from r3v_ray.tasks.base import ReadReport, Record, RecordError, Task
from r3v_ray.tasks.sources import (
    build_records,
    image_name,
    json_or_datasets_rows,
    require_image,
    text_field,
)

FILES = ("clevr_{split}.json", "{split}.json", "{split}.jsonl")


class ClevrMathTask(Task):
    name = "clevr_math"
    cot_instruction = (
        "Think step by step, then give the final answer as a single integer on the last line as 'Answer: <number>'."
    )
    direct_instruction = "Answer with a single integer only, as 'Answer: <number>'."

    def __init__(self, image_cache_dir: str | None = None):
        self.image_cache_dir = image_cache_dir

    def normalize(self, answer: str) -> str | None:
        # The one integer of the answer line: release rationales sometimes give a unit or a sentence ('Answer: 7
        # objects', 'There are 7 objects left.'); '2.5', 'many' or '4 or 5' is no integer: never credited.
        number = number_answer(answer, words=True)
        value = None if number is None else parse_integer(number)
        return None if value is None else str(value)

    def check(self, predicted: str | None, gold: str) -> bool:
        value = None if predicted is None else self.normalize(predicted)
        return value is not None and value == self.normalize(gold)

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        rows, _ = json_or_datasets_rows(path, FILES, split, "clevr_math")
        image_dirs = [path / "clevr_math_imgs", path / "images", path]
        cache = Path(self.image_cache_dir) if self.image_cache_dir else path / ".r3v-image-cache" / "clevr_math" / split

        def build(index: int, row: dict) -> Record:
            rid = str(row.get("id") or f"clevr-{split}-{index:06d}")
            question = text_field(row, "question", rid)
            raw = text_field(row, "answer", rid, "label")
            value = parse_integer(raw)
            if value is None:
                raise RecordError(rid, "answer", f"{raw!r} is not an integer")
            image = image_name(row.get("filename") or row.get("image"), rid, cache)
            metadata = {k: row[k] for k in ("template", "filename") if isinstance(row.get(k), str)}
            return Record(
                id=rid,
                question=question,
                answer=str(value),
                image=require_image(rid, image, image_dirs),
                metadata=metadata,
            )

        yield from build_records(rows, build, report)
