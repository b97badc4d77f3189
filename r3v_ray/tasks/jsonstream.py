"""Streaming readers for the JSON shapes the benchmarks ship: a top-level array, a top-level object keyed by id,
and JSON lines. Large files are read in chunks, one element at a time, never whole into memory.

A broken element inside a JSON document ends the document (the rest cannot be parsed), so that is an error
naming the file and offset; a broken line in JSON lines is only that line, so it comes back as a `BadLine` for the
reader to count as skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from r3v_ray.tasks.base import RecordError

CHUNK_CHARS = 1 << 20
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class BadLine:
    """A JSON-lines line that is not valid JSON."""

    where: str  # "file:line"
    problem: str


class _Cursor:
    """A growing window over a text file with just enough to decode one JSON value at a time."""

    def __init__(self, fh, path: Path, chunk_chars: int):
        self.fh, self.path, self.chunk_chars = fh, path, chunk_chars
        self.buf, self.pos, self.offset, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(self.chunk_chars)
        if not chunk:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:  # drop what has been consumed
            self.offset += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += chunk
        return True

    def error(self, problem: str) -> RecordError:
        return RecordError(f"{self.path.name}@{self.offset + self.pos}", "<json>", problem)

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"expected one of {list(chars)}, found {c or 'end of file'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise self.error(f"malformed JSON: {exc.msg}") from None
            # A number that ends exactly at the end of the window may continue in the next chunk.
            if end == len(self.buf) and self._more():
                continue
            self.pos = end
            return obj


def iter_json_document(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str | int, Any]]:
    """(index, element) for a top-level array, (key, value) for a top-level object; streamed."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as fh:
        cur = _Cursor(fh, path, chunk_chars)
        opening = cur.expect("[{")
        closing = "]" if opening == "[" else "}"
        index = 0
        if cur.peek() == closing:
            cur.pos += 1
        else:
            while True:
                if opening == "{":
                    key = cur.value()
                    if not isinstance(key, str):
                        raise cur.error("object key is not a string")
                    cur.expect(":")
                    yield key, cur.value()
                else:
                    yield index, cur.value()
                index += 1
                if cur.expect("," + closing) == closing:
                    break
        if cur.peek():
            raise cur.error("unexpected content after the top-level JSON value")


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict | BadLine]]:
    """(line number, parsed row) per non-empty line; a line that does not parse comes back as a BadLine."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, BadLine(f"{path.name}:{lineno}", f"malformed JSON: {exc.msg}")


def first_char(path: str | Path) -> str:
    """The first non-whitespace character of a text file ('' when empty): tells a JSON array from JSON lines."""
    with Path(path).open(encoding="utf-8-sig") as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip(_WHITESPACE + "\ufeff")
            if stripped:
                return stripped[0]


def iter_json_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Rows of a file that is either a JSON array or JSON lines (sniffed from its first character), streamed.

    Yields (where, row): `where` is "file[index]" or "file:line"; a bad JSON line comes back as a BadLine.
    (A document keyed by id, like TabMWP's, is read with `iter_json_document`: a one-line keyed document and a
    one-line JSON-lines file cannot be told apart.)
    """
    path = Path(path)
    if first_char(path) == "[":
        for index, row in iter_json_document(path):
            yield f"{path.name}[{index}]", row
        return
    for lineno, row in iter_json_lines(path):
        yield f"{path.name}:{lineno}", row
