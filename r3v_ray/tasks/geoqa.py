"""GeoQA (GeoQA+ as the R3V Qwen2-VL release ships it): geometry problems over a diagram, four options each.

Files: `<path>/<split>.jsonl` or `<path>/<split>.json`, holding either one JSON array (the release's '.jsonl' files
are) or JSON lines. A row: {"id", "question", "choices": [...], "answer": "B" (or a 0-based index), "image":
"<name>.png"}, the image under `<path>/images/` (or `<path>/`). Scored by option letter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from r3v_ray.tasks.answers import letter_index
from r3v_ray.tasks.base import ReadReport, Record, RecordError
from r3v_ray.tasks.jsonstream import iter_json_rows
from r3v_ray.tasks.multiple_choice import MultipleChoiceTask, gold_letter
from r3v_ray.tasks.sources import build_records, choices_field, find_split_file, require_image, text_field

FILES = ("{split}.jsonl", "{split}.json")


class GeoQATask(MultipleChoiceTask):
    name = "geoqa"

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        data_file = find_split_file(path, FILES, split, "geoqa")
        image_dirs = [path / "images", path]

        def build(index: int, row: dict) -> Record:
            rid = str(row.get("id") or f"geoqa-{split}-{index:05d}")
            question = text_field(row, "question", rid)
            choices = choices_field(row, rid)
            if not choices:
                raise RecordError(rid, "choices", "missing: GeoQA questions are multiple choice")
            answer = gold_letter(row.get("answer"), choices, rid)
            return Record(
                id=rid,
                question=question,
                answer=answer,
                image=require_image(rid, row.get("image"), image_dirs),
                choices=choices,
                metadata={"answer_text": choices[letter_index(answer)]},
            )

        yield from build_records(iter_json_rows(data_file), build, report)
