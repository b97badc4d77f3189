"""Multiple-choice scoring shared by GeoQA, M3CoT (and TabMWP's option questions): the gold answer is an option
letter, a prediction counts when it names the same letter. With the record at hand, an answer given as the
option's text is mapped to its letter; an answer naming no option, or two or more, is never credited
(answers.option_answer; docs/data.md).
"""

from __future__ import annotations

from r3v_ray.tasks.answers import fold_text, letter_index, option_answer, option_letter
from r3v_ray.tasks.base import Record, RecordError, Task, last_answer_text, letters


def gold_letter(answer: object, choices: list[str], record_id: str, field_name: str = "answer") -> str:
    """The gold option letter from a letter ('B', '(B)'), a 0-based index (7 in some releases) or the option's
    exact text; RecordError naming the record when it is none of those or outside the options."""
    if isinstance(answer, bool) or answer is None or str(answer).strip() == "":
        raise RecordError(record_id, field_name, "missing gold answer")
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return letters(len(choices))[answer]
        raise RecordError(record_id, field_name, f"option index {answer} outside 0..{len(choices) - 1}")
    text = str(answer).strip()
    letter = option_letter(text)
    if letter is not None and len(text.strip("().:[] ")) == 1:
        if letter_index(letter) < len(choices):
            return letter
        raise RecordError(
            record_id, field_name, f"bad choice letter {text!r}: {len(choices)} options (A-{letters(len(choices))[-1]})"
        )
    matches = [i for i, c in enumerate(choices) if fold_text(c) == fold_text(text)]
    if len(matches) == 1:
        return letters(len(choices))[matches[0]]
    raise RecordError(record_id, field_name, f"{text!r} is neither an option letter nor one of the options")


class MultipleChoiceTask(Task):
    """A task whose every question has options and whose gold answer is a letter."""

    cot_instruction = (
        "Think step by step, then give the letter of the correct option on the last line as 'Answer: <letter>'."
    )
    direct_instruction = "Answer with the letter of the correct option only, as 'Answer: <letter>'."

    def normalize(self, answer: str) -> str | None:
        return option_answer(answer)

    def extract_for(self, record: Record, text: str | None) -> str | None:
        return option_answer(last_answer_text(text), record.choices)

