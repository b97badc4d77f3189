"""What `r3v data inspect` shows about one split of a task's data: counts read and skipped (with reasons), an
example prompt in both forms, and the gold-answer distribution. `summarize` reads; `format_summary` is pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from r3v_ray.tasks.base import ReadReport, Record, RecordError, Task, load_image, printable


@dataclass
class DataSummary:
    task: str
    split: str
    report: ReadReport
    answers: Counter = field(default_factory=Counter)  # gold answer -> count
    example: Record | None = None
    cot_prompt: str | None = None
    direct_prompt: str | None = None
    direct_target: str | None = None


def summarize(task: Task, path: str | Path, split: str, limit: int | None = None, **checks) -> DataSummary:
    """Read up to `limit` records of one split (all when None) and summarise them. Every image is decoded, as
    sampling and training decode it: a record whose image does not decode is reported skipped. `checks` are
    Task.read's image checks (allow_external_images, max_image_pixels)."""
    report = ReadReport(source=f"{task.name} {split} ({path})")
    summary = DataSummary(task=task.name, split=split, report=report)
    for record in islice(task.read(path, split, report, **checks), limit):
        if record.image:
            try:
                load_image(record.image, record.id)
            except RecordError as exc:
                report.reject(exc)
                continue
        summary.answers[record.answer] += 1
        if summary.example is None:
            summary.example = record
            summary.cot_prompt = task.cot_prompt(record)
            summary.direct_prompt = task.direct_prompt(record)
            summary.direct_target = task.format_answer(record.answer)
    return summary


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in printable(text, newlines=True).splitlines())


def format_summary(summary: DataSummary, top: int = 10, show_skips: int = 10) -> str:
    report = summary.report
    # Everything from the data is printed through `printable`: an id may hold terminal escapes.
    lines = [f"task {summary.task}, split {printable(summary.split)}", f"  {report.summary()}"]
    lines += [f"    {line}" for line in report.skip_lines(show_skips)]
    if summary.example is not None:
        ex = summary.example
        lines += [
            f"example {printable(ex.id)} (image: {printable(ex.image)}; gold: {printable(ex.answer)})",
            "  CoT prompt:",
            _indent(summary.cot_prompt or ""),
            "  warm-up direct prompt -> target:",
            _indent(summary.direct_prompt or ""),
            _indent(f"-> {summary.direct_target}"),
        ]
        if ex.rationale:
            lines += ["  teacher rationale:", _indent(ex.rationale)]
    total = sum(summary.answers.values())
    lines.append(f"answers: {len(summary.answers)} distinct over {total} records")
    for answer, count in summary.answers.most_common(top):
        lines.append(f"  {count:>7}  {100 * count / total:5.1f}%  {printable(answer)}")
    if len(summary.answers) > top:
        rest = total - sum(c for _, c in summary.answers.most_common(top))
        lines.append(f"  {rest:>7}  {100 * rest / total:5.1f}%  ({len(summary.answers) - top} other answers)")
    return "\n".join(lines)
