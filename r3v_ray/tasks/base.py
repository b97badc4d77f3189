"""The common question record and the task interface (prompt, answer extractor, checker).

Every task reads its public format into `Record`s and owns how a question is asked and how an answer is scored.
One extractor serves labeling and evaluation alike; an answer that cannot be extracted is never credited.
"""

from __future__ import annotations

import logging
import re
import warnings
from abc import ABC
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from r3v_ray.tasks.imaging import ImageError, decode_image, to_rgb8
from r3v_ray.tasks.answers import final_answer_text
from r3v_ray.tasks.jsonstream import BadLine, iter_json_lines

log = logging.getLogger(__name__)

ANSWER_PREFIX = "Answer:"


def last_answer_text(text: str | None) -> str | None:
    """The content of the final answer line, unwrapped (answers.final_answer_text; docs/data.md): an answer buried
    earlier in the rationale does not count, and an empty or cut-off final line is no answer."""
    return final_answer_text(text)


_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\udc80-\udcff]")


def printable(text: object, newlines: bool = False) -> str:
    """Text from a data file made safe to print: control characters (an id holding ESC[2J would clear the user's
    screen), bidirectional overrides and undecodable bytes as escapes; newlines and tabs kept with `newlines`."""
    t = str(text)
    if not newlines:
        t = t.replace("\n", "\\n").replace("\t", "\\t")
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), t)


class RecordError(ValueError):
    """A record that cannot be used; the message names the record and the field."""

    def __init__(self, record_id: str, field_name: str, problem: str):
        self.record_id, self.field_name, self.problem = record_id, field_name, problem
        super().__init__(f"record {record_id!r}: field {field_name!r}: {problem}")

    def __reduce__(self):
        # Rebuilt from its own fields: the default (the class called with `args`, here the one message) would
        # fail to unpickle, and Ray hands exceptions from workers to the driver pickled.
        return (type(self), (self.record_id, self.field_name, self.problem))


@dataclass(frozen=True)
class Skip:
    """One record a reader left out, and why."""

    record_id: str
    field: str
    reason: str


@dataclass
class ReadReport:
    """What one read of one split did: records yielded and records skipped (each with its id and reason).

    Every reader fills one; `Task.read` makes its own and logs it when the caller passes none.
    """

    source: str = ""
    read: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def skip(self, record_id: str, field_name: str, reason: str) -> None:
        self.skipped.append(Skip(str(record_id), field_name, reason))

    def skip_error(self, error: RecordError) -> None:
        self.skip(error.record_id, error.field_name, error.problem)

    def reject(self, error: RecordError) -> None:
        """A record counted read, then found unusable (its image does not decode): counted skipped instead."""
        self.read -= 1
        self.skip_error(error)

    @property
    def seen(self) -> int:
        return self.read + len(self.skipped)

    def skipped_by_field(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.field] = counts.get(s.field, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        text = f"{printable(self.source or 'read')}: {self.read} read, {len(self.skipped)} skipped"
        if self.skipped:
            text += " (" + ", ".join(f"{printable(k)}: {v}" for k, v in self.skipped_by_field().items()) + ")"
        return text

    def skip_lines(self, show: int = 10) -> list[str]:
        """One printable line per skipped record (the first `show`), then how many more."""
        lines = [f"skipped {printable(s.record_id)}: {printable(s.field)}: {printable(s.reason)}"
                 for s in self.skipped[:show]]
        if len(self.skipped) > show:
            lines.append(f"... and {len(self.skipped) - show} more skipped records")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "skipped": len(self.skipped),
            "skipped_by_field": self.skipped_by_field(),
            "skips": [asdict(s) for s in self.skipped],
        }

    def log(self, logger: logging.Logger = log, show: int = 10) -> None:
        if not self.skipped:
            logger.info(self.summary())
            return
        logger.warning(self.summary())
        for line in self.skip_lines(show):
            logger.warning("  %s", line)


@dataclass
class Record:
    """One question. `image` is a path (absolute, or relative to the data file's directory) or None."""

    id: str
    question: str
    answer: str
    image: str | None = None
    choices: list[str] | None = None
    rationale: str | None = None  # teacher chain of thought, where the task has one
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any], base_dir: str | Path | None = None) -> "Record":
        rid = str(row.get("id", "")) or "<missing id>"
        if not row.get("id"):
            raise RecordError(rid, "id", "missing")
        if row.get("answer") is None or str(row.get("answer")).strip() == "":
            raise RecordError(rid, "answer", "missing gold answer")
        if not str(row.get("question") or "").strip():
            raise RecordError(rid, "question", "missing or empty")
        image = row.get("image")
        if image and base_dir is not None and not Path(image).is_absolute() and "://" not in str(image):
            local = Path(base_dir) / image
            if not local.exists() and (Path(base_dir) / posix_path(image)).exists():
                local = Path(base_dir) / posix_path(image)
            image = str(local)
        return cls(
            id=str(row["id"]),
            question=str(row["question"]),
            answer=str(row["answer"]).strip(),
            image=image or None,
            choices=list(row["choices"]) if row.get("choices") else None,
            rationale=row.get("rationale"),
            metadata=dict(row.get("metadata") or {}),
        )


def posix_path(name: str) -> str:
    """A relative path written on Windows ('images\\a.png', as some release files have them) with '/' separators.
    Callers try the name as written first: on POSIX a backslash is a legal file-name character."""
    return name.replace("\\", "/")


_MAX_PATH_BYTES = 4096


def path_in_bytes(data: bytes | bytearray | memoryview) -> str | None:
    """The path or URI that `data` spells, or None when it is image content.

    A Ray Data batch that mixes rows whose image is a path with rows whose image is bytes hands every path over as
    bytes too (the column becomes binary). Image content never passes for a path: PNG and JPEG files open with
    bytes that are not UTF-8, and the other formats' headers hold NUL bytes.
    """
    raw = bytes(data)
    if not raw or len(raw) > _MAX_PATH_BYTES or b"\0" in raw or b"\n" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def load_image(source: str | bytes | Image.Image, record_id: str = "?") -> Image.Image:
    """Decode an image from a path or bytes (content, or a path that arrived as bytes) as 8-bit RGB, upright, from
    the allowed formats only (r3v_ray/tasks/imaging.py, the decoder serving uses too); a failure names the record."""
    if isinstance(source, Image.Image):
        return to_rgb8(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = path_in_bytes(source) or bytes(source)
    try:
        return decode_image(source)
    except ImageError as exc:
        raise RecordError(record_id, "image", f"unreadable image ({exc})") from exc


# -- image checks before decoding (docs/data.md); decoding itself is load_image's ----------------------------------
def image_outside(image: str, roots: list[Path]) -> str | None:
    """Why a record's image is not inside one of `roots` after symlinks are resolved (None when it is): a data file
    from elsewhere must not make training read any image file the job can read."""
    if "://" in image:
        return f"{image} is not a file under the data directory (task.allow_external_images: true reads it)"
    real = Path(image).resolve()
    if any(real.is_relative_to(root.resolve()) for root in roots):
        return None
    return (f"{image} resolves to {real}, outside the data directory {roots[0]} "
            "(task.allow_external_images: true reads it)")


def image_too_large(image: str, max_pixels: int | None) -> str | None:
    """Why an image file has too many pixels to decode, from its header alone (None when it has not, when there is
    no limit, or when the header does not read: load_image names that where the image is decoded)."""
    if max_pixels is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(image) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        return f"{image}: too many pixels to decode ({exc})"
    except Exception:  # PIL raises several unrelated types
        return None
    if width * height > max_pixels:
        return f"{image}: {width}x{height} = {width * height} pixels, over task.max_image_pixels ({max_pixels})"
    return None


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def format_choices(choices: list[str]) -> str:
    return "Choices: " + " ".join(f"({letter}) {text}" for letter, text in zip(letters(len(choices)), choices))


@dataclass(frozen=True)
class Faithfulness:
    """consistent: the final answer is what the rationale's own stated facts and the question's operation give.
    grounded: the rationale states at least one fact about the image and every stated fact is the image's."""

    consistent: bool
    grounded: bool


class Task(ABC):
    """A reasoning task: how to ask (CoT and direct forms), how to extract and check an answer."""

    name: str = "task"
    cot_instruction = "Answer the question step by step and end with 'Answer: <answer>'."
    direct_instruction = "Answer the question with 'Answer: <answer>' only."

    # -- prompts ---------------------------------------------------------------------------------
    def question_text(self, record: Record) -> str:
        text = record.question
        if record.choices:
            text += "\n" + format_choices(record.choices)
        return text

    def cot_prompt(self, record: Record) -> str:
        return f"{self.question_text(record)}\n{self.cot_instruction}"

    def direct_prompt(self, record: Record) -> str:
        return f"{self.question_text(record)}\n{self.direct_instruction}"

    def caption(self, record: Record) -> str | None:
        """What the record's image shows, as a perception example for the warm-up set (None: the task has no
        captions; `reflect.warmup_captions` then adds nothing)."""
        return None

    def faithfulness(self, record: Record, rationale: str | None) -> Faithfulness | None:
        """Whether a rationale's answer follows from its own stated facts, and whether those facts are the
        image's; None where the task cannot check it (only the built-in task can: it knows every count)."""
        return None

    def format_answer(self, answer: str) -> str:
        return f"{ANSWER_PREFIX} {answer}"

    # -- scoring ---------------------------------------------------------------------------------
    # Labeling, evaluation and serving all score through `score_record` (the record-aware extractor, then the
    # checker); `extract_answer` and `score` are its record-free parts, for an answer without its question.
    def extract_answer(self, text: str | None) -> str | None:
        """The content of the final answer line, normalised; None when there is none."""
        raw = last_answer_text(text)
        if raw is None:
            return None
        return self.normalize(raw) or None

    def normalize(self, answer: str) -> str | None:
        return answer.strip().rstrip(".").strip() or None

    def check(self, predicted: str | None, gold: str) -> bool:
        """Is an extracted answer correct? Exact match after the task's normalisation; never for None."""
        return predicted is not None and self.normalize(predicted) == self.normalize(gold)

    def score(self, rationale: str | None, gold: str) -> tuple[str | None, bool]:
        predicted = self.extract_answer(rationale)
        return predicted, (predicted is not None and self.check(predicted, gold))

    def extract_for(self, record: Record, text: str | None) -> str | None:
        """Extraction that may use the record (its options, its unit); the default ignores the record.

        Multiple-choice tasks override it to map an answer given as option text to its letter.
        """
        return self.extract_answer(text)

    def score_record(self, record: Record, rationale: str | None) -> tuple[str | None, bool]:
        """The one path from a rationale to a verdict: (extracted answer, correct). A record without a gold answer
        (a question served over HTTP) gets its answer extracted and is never correct."""
        predicted = self.extract_for(record, rationale)
        return predicted, (predicted is not None and bool(record.answer) and self.check(predicted, record.answer))

    # -- data ------------------------------------------------------------------------------------
    def read(
        self, path: str | Path, split: str = "train", report: ReadReport | None = None, *,
        allow_external_images: bool = False, max_image_pixels: int | None = None,
    ) -> Iterator[Record]:
        """Records of one split, streamed. `report` (made and logged here when None) counts read and skipped.

        Beyond the task's own reader: a record whose image resolves outside the data (`image_roots`) is skipped
        unless `allow_external_images`; one whose image header says more than `max_image_pixels` pixels is
        skipped before anything decodes it; a record whose id an earlier record has is skipped (the first kept).
        """
        own = report is None
        if report is None:
            report = ReadReport(source=f"{self.name} {split} ({path})")
        roots = self.image_roots(Path(path))
        seen: set[str] = set()
        for record in self.iter_records(Path(path), split, report):
            if record.id in seen:
                report.skip(record.id, "id", "duplicate id: an earlier record has it (the first is kept)")
                continue
            problem = record.image and (
                (None if allow_external_images else image_outside(record.image, roots))
                or image_too_large(record.image, max_image_pixels)
            )
            if problem:
                report.skip(record.id, "image", problem)
                continue
            seen.add(record.id)
            report.read += 1
            yield record
        if own:
            report.log()

    def image_roots(self, path: Path) -> list[Path]:
        """Where records' images may be: the data directory (a data file's own directory) and the directories the
        task's parameters name (image_dir, image_cache_dir), which the user chose."""
        named = [getattr(self, name, None) for name in ("image_dir", "image_cache_dir")]
        return [path if path.is_dir() else path.parent] + [Path(d) for d in named if d]

    def iter_records(self, path: Path, split: str, report: ReadReport) -> Iterator[Record]:
        """The task's reader; skipped records go to `report`. The default reads `<path>/<split>.jsonl`."""
        yield from read_jsonl_records(path / f"{split}.jsonl", report)


def read_jsonl_records(path: str | Path, report: ReadReport | None = None) -> Iterator[Record]:
    """Common-record JSON lines. With a `report` a line or record that cannot be used is skipped there, by name;
    without one the first such raises RecordError."""
    path = Path(path)
    for lineno, row in iter_json_lines(path):
        try:
            if isinstance(row, BadLine):
                raise RecordError(row.where, "<json>", row.problem)
            if not isinstance(row, dict):
                found = type(row).__name__
                raise RecordError(f"{path.name}:{lineno}", "<row>", f"expected a JSON object, found {found}")
            yield Record.from_dict(row, base_dir=path.parent)
        except RecordError as exc:
            if report is None:
                raise
            report.skip_error(exc)
