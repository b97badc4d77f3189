"""ChartQA: questions about a chart image, answered with a number, Yes/No, or a word or phrase.

Files (the official release): `<path>/<split>/<split>_human.json` and `<path>/<split>/<split>_augmented.json`,
each a JSON array of {"imgname", "query", "label"}, images in `<path>/<split>/png/`; split 'val' is also found as
'dev'/'validation'. Records are numbered per source file ('test-human-00012'); metadata['source'] says which.

Scoring is the benchmark's relaxed accuracy: a numeric answer within 5% of a numeric gold (relative, inclusive),
anything else a case-insensitive exact match (see answers.relaxed_match). A numeric gold is compared with the one
number the answer line states (docs/data.md says where this departs from the benchmark's scorer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from r3v_ray.tasks.answers import (
    chart_number,
    fold_text,
    format_number,
    number_answer,
    parse_number,
    relaxed_match,
    strip_lead_in,
)
from r3v_ray.tasks.base import ReadReport, Record, Task, last_answer_text
from r3v_ray.tasks.jsonstream import iter_json_document
from r3v_ray.tasks.sources import build_records, find_split_file, require_image, text_field

SOURCES = ("human", "augmented")


class ChartQATask(Task):
    name = "chartqa"
    cot_instruction = (
        "Think step by step, then give the final answer (a number, Yes/No, or a word or phrase) on the last line "
        "as 'Answer: <answer>'."
    )
    direct_instruction = "Answer with a number, Yes/No, or a word or phrase only, as 'Answer: <answer>'."

    def __init__(self, sources: list[str] | tuple[str, ...] = SOURCES):
        unknown = set(sources) - set(SOURCES)
        if unknown or not sources:
            raise ValueError(f"chartqa task: sources must be a non-empty subset of {list(SOURCES)}: {list(sources)}")
        self.sources = tuple(sources)

    def normalize(self, answer: str) -> str | None:
        """Numbers in one spelling ('1,000' and '1000.0' -> '1000', '45.0%' -> '45%'), text case-folded: equal
        answers vote together in Majority@N. Checking is relaxed_match, never string equality alone."""
        text = strip_lead_in(answer).strip("\"'").strip()
        percent = text.endswith("%")
        number = parse_number(text[:-1] if percent else text.rstrip("."))
        if number is not None:
            return format_number(number) + ("%" if percent else "")
        return fold_text(text) or None

    def extract_for(self, record: Record, text: str | None) -> str | None:
        """Against a numeric gold, the one number the answer line states ('The value is 45%.' -> '45%'; '4 or 5'
        -> None); otherwise the whole answer."""
        content = last_answer_text(text)
        if content is not None and record.answer and chart_number(record.answer) is not None:
            content = number_answer(content)
        return None if content is None else self.normalize(content)

    def check(self, predicted: str | None, gold: str) -> bool:
        return predicted is not None and relaxed_match(predicted, gold)

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        for source in self.sources:
            data_file = find_split_file(path, [f"{{split}}/{{split}}_{source}.json"], split, f"chartqa {source}")
            image_dirs = [data_file.parent / "png", data_file.parent]

            def build(index: int, row: dict, source: str = source) -> Record:
                rid = f"{split}-{source}-{index:05d}"
                question = text_field(row, "query", rid, "question")
                label = text_field(row, "label", rid, "answer")
                return Record(
                    id=rid,
                    question=question,
                    answer=label,
                    image=require_image(rid, row.get("imgname"), image_dirs),
                    metadata={"source": source, "imgname": row.get("imgname")},
                )

            rows = ((f"{data_file.name}[{i}]", row) for i, row in iter_json_document(data_file))
            yield from build_records(rows, build, report)
