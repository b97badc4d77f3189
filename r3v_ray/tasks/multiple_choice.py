"""Multiple-choice scoring shared by GeoQA, M3CoT (and TabMWP's option questions): the gold answer is an option
letter, a prediction counts when it names the same letter. With the record at hand, an answer given as the
option's text is mapped to its letter; an answer naming no option is never credited.
"""

from __future__ import annotations

from r3v_ray.tasks.answers import fold_text, letter_index, option_letter
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


def letter_for(text: str, choices: list[str] | None) -> str | None:
    """The letter an answer names, given the options: a valid letter, or text equal to exactly one option."""
    letter = option_letter(text)
    if choices is None:
        return letter
    if letter is not None:
        return letter if letter_index(letter) < len(choices) else None
    matches = [i for i, c in enumerate(choices) if fold_text(c) == fold_text(text)]
    return letters(len(choices))[matches[0]] if len(matches) == 1 else None


class MultipleChoiceTask(Task):
    """A task whose every question has options and whose gold answer is a letter."""

    cot_instruction = (
        "Think step by step, then give the letter of the correct option on the last line as 'Answer: <letter>'."
    )
    direct_instruction = "Answer with the letter of the correct option only, as 'Answer: <letter>'."

    def normalize(self, answer: str) -> str | None:
        return option_letter(answer)

    def extract_for(self, record: Record, text: str | None) -> str | None:
        raw = last_answer_text(text)
        return None if raw is None else letter_for(raw, record.choices)

