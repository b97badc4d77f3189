"""TabMWP (tabular math word problems): a question about a table given as an image; free-text or multiple choice.

Files: `<path>/problems_<split>.json` (train, dev, test, dev1k, test1k), one JSON object keyed by problem id (pid):
{"question", "choices": null or [...], "answer", "unit", "solution", "ques_type": "free_text" | "multi_choice",
"ans_type": "integer_number" | "decimal_number" | "extractive_text" | "boolean_text" | "other_text", "grade",
"table_title", "table", ...}; the table image is `<path>/tables/<pid>.png`. The file is streamed.

Scoring follows the benchmark's evaluation script: answers are compared in its normal form (units, commas and '$'
stripped, numbers to 3 decimals, fractions as decimals, text case-insensitively); a multiple-choice question is
right when the prediction names the gold option, by letter or by the option's text, and no other option (the
official scorer's most-similar option is not used: docs/data.md says why). The gold of a
multiple-choice question is stored as its letter (the option text is in metadata['answer_text']).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from r3v_ray.tasks.answers import (
    number_answer,
    option_answer,
    option_letter,
    strip_lead_in,
    tabmwp_normalize,
    tabmwp_number,
    with_answer_line,
)
from r3v_ray.tasks.base import ReadReport, Record, RecordError, Task, format_choices, last_answer_text, letters
from r3v_ray.tasks.jsonstream import iter_json_document
from r3v_ray.tasks.sources import build_records, choices_field, find_split_file, require_image, text_field

FILES = ("problems_{split}.json",)
NUMERIC_TYPES = ("integer_number", "decimal_number")
METADATA_FIELDS = ("ques_type", "ans_type", "grade", "table_title", "table", "split")

MC_COT = (
    "Think step by step using the table, then give the letter of the correct option on the last line "
    "as 'Answer: <letter>'."
)
FREE_COT = (
    "Think step by step using the table, then give the final answer (a number, or a word or phrase) on the last line "
    "as 'Answer: <answer>'."
)
MC_DIRECT = "Answer with the letter of the correct option only, as 'Answer: <letter>'."
FREE_DIRECT = "Answer with a number, or a word or phrase, only, as 'Answer: <answer>'."


class TabMWPTask(Task):
    name = "tabmwp"

    # -- prompts ---------------------------------------------------------------------------------
    def question_text(self, record: Record) -> str:
        text = record.question
        unit = record.metadata.get("unit")
        if unit:
            text += f" (Unit: {unit})"
        if record.choices:
            text += "\n" + format_choices(record.choices)
        return text

    def cot_prompt(self, record: Record) -> str:
        return f"{self.question_text(record)}\n{MC_COT if record.choices else FREE_COT}"

    def direct_prompt(self, record: Record) -> str:
        return f"{self.question_text(record)}\n{MC_DIRECT if record.choices else FREE_DIRECT}"

    # -- scoring ---------------------------------------------------------------------------------
    def normalize(self, answer: str) -> str | None:
        text = strip_lead_in(answer)
        if not text:
            return None
        stripped = text.strip("().: ")
        if len(stripped) == 1 and stripped.isalpha():  # a bare option letter, '(b)' or 'B.'
            return stripped.upper()
        letter = option_letter(text)
        if letter is not None and text.startswith("("):  # '(B) Friday'
            return letter
        return tabmwp_normalize(text) or None

    def extract_for(self, record: Record, text: str | None) -> str | None:
        content = last_answer_text(text)
        if content is None or record.choices:
            # An option by its letter or by its text in the benchmark's normal form ('$5.00' names the option '5').
            return option_answer(content, record.choices, key=tabmwp_normalize)
        numeric = record.metadata.get("ans_type") in NUMERIC_TYPES or (
            bool(record.answer) and tabmwp_number(record.answer.strip()) is not None
        )
        if numeric:  # the one number the answer line states ('5.50 cm', 'There are 12 stamps.')
            content = number_answer(content)
            return None if content is None else tabmwp_normalize(content) or None
        return tabmwp_normalize(strip_lead_in(content), record.metadata.get("unit")) or None

    # -- data ------------------------------------------------------------------------------------
    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        data_file = find_split_file(path, FILES, split, "tabmwp")
        tables = [path / "tables"]
        # The file is keyed by pid; the pid rides along in the row so `build` can name the record.
        rows = (
            (str(pid), dict(row, pid=pid) if isinstance(row, dict) else row)
            for pid, row in iter_json_document(data_file)
        )

        def build(index: int, row: dict) -> Record:
            pid = str(row["pid"])
            question = text_field(row, "question", pid)
            raw_answer = text_field(row, "answer", pid)
            choices = choices_field(row, pid)
            ans_type = str(row.get("ans_type") or "")
            metadata = {k: row[k] for k in METADATA_FIELDS if row.get(k) is not None}
            metadata["unit"] = str(row.get("unit") or "")
            if choices:
                gold = tabmwp_normalize(raw_answer)
                matches = [i for i, c in enumerate(choices) if tabmwp_normalize(c) == gold]
                if len(matches) != 1:
                    raise RecordError(pid, "answer", f"{raw_answer!r} is not one of the choices {choices}")
                answer = letters(len(choices))[matches[0]]
                metadata["answer_text"] = raw_answer
            else:
                if ans_type in NUMERIC_TYPES and tabmwp_number(raw_answer.strip()) is None:
                    raise RecordError(pid, "answer", f"{raw_answer!r} is not a number (ans_type {ans_type})")
                answer = raw_answer
            return Record(
                id=pid,
                question=question,
                answer=answer,
                image=require_image(pid, f"{pid}.png", tables),
                choices=choices,
                rationale=with_answer_line(row.get("solution"), self.format_answer(answer)),
                metadata=metadata,
            )

        yield from build_records(rows, build, report)
