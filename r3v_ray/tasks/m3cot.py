"""M3CoT (multi-domain, multi-step multimodal CoT): multiple-choice science, commonsense and math questions with
a reference rationale.

Files: the GitHub release's `<path>/<split>.jsonl` (or `<path>/data/<split>.jsonl`; split 'dev', also found as
'validation'), one row per line: {"id", "question", "choices", "answer": "B", "context", "rationale", "domain",
"topic", "category", "image_id", "image" or "image_path"}; or, when there is no such file, the Hugging Face release
(parquet with embedded images) read from the local directory through `datasets`; embedded images are written once
under `image_cache_dir` (default `<path>/.r3v-image-cache/m3cot/<split>`). Scored by option letter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from r3v_ray.tasks.answers import letter_index, with_answer_line
from r3v_ray.tasks.base import ReadReport, Record, RecordError
from r3v_ray.tasks.multiple_choice import MultipleChoiceTask, gold_letter
from r3v_ray.tasks.sources import (
    build_records,
    choices_field,
    image_name,
    json_or_datasets_rows,
    require_image,
    text_field,
)

FILES = ("{split}.jsonl", "data/{split}.jsonl")
METADATA_FIELDS = ("domain", "topic", "category", "image_id", "split")


class M3CoTTask(MultipleChoiceTask):
    name = "m3cot"

    def __init__(self, image_cache_dir: str | None = None):
        self.image_cache_dir = image_cache_dir

    def question_text(self, record: Record) -> str:
        context = str(record.metadata.get("context") or "").strip()
        text = super().question_text(record)
        return f"Context: {context}\n{text}" if context else text

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        rows, data_file = json_or_datasets_rows(path, FILES, split, "m3cot")
        base = data_file.parent if data_file else path
        image_dirs = [base, base / "images", path, path / "images"]
        cache = Path(self.image_cache_dir) if self.image_cache_dir else path / ".r3v-image-cache" / "m3cot" / split

        def build(index: int, row: dict) -> Record:
            rid = text_field(row, "id", f"{split}[{index}]")
            question = text_field(row, "question", rid)
            choices = choices_field(row, rid)
            if not choices:
                raise RecordError(rid, "choices", "missing: M3CoT questions are multiple choice")
            answer = gold_letter(row.get("answer"), choices, rid)
            image = image_name(row.get("image_path") or row.get("image"), rid, cache) or f"images/{rid}.png"
            metadata = {k: row[k] for k in METADATA_FIELDS if row.get(k) is not None}
            metadata["context"] = str(row.get("context") or "")
            metadata["answer_text"] = choices[letter_index(answer)]
            return Record(
                id=rid,
                question=question,
                answer=answer,
                # The GitHub release's paths start at its repository root ('data/images/<id>.png').
                image=require_image(rid, image, image_dirs, fallback_names=[f"images/{Path(image).name}"]),
                choices=choices,
                rationale=with_answer_line(row.get("rationale"), self.format_answer(answer)),
                metadata=metadata,
            )

        yield from build_records(rows, build, report)
