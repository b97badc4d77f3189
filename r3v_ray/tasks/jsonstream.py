"""Streaming readers for the JSON shapes the benchmarks ship: a top-level array, a top-level object keyed by id,
and JSON lines. Large files are read in chunks, one element at a time, never whole into memory.

Damage never costs more than it must, and is always named (docs/data.md):
- a broken element inside a JSON document (a file cut off mid-record, a stray byte) ends the document, since the
  rest cannot be parsed: the elements before it come through, then one `BadLine` naming the file, the element's
  position (or key) and the line and byte offset of the damage;
- a broken line in JSON lines is only that line: a `BadLine` naming the file and line;
- invalid UTF-8 inside an element or line, and nesting deeper than MAX_DEPTH, make that one element or line a
  `BadLine` (the bytes are read with 'surrogateescape', so the rest of the file still decodes).
The readers count each `BadLine` as a skipped record (sources.build_records).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

CHUNK_CHARS = 1 << 20
MAX_DEPTH = 64  # deeper than any benchmark record; a question of 200,000 '[' is damage, not data
_WHITESPACE = " \t\n\r"
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what 'surrogateescape' makes of a byte that is not UTF-8


@dataclass(frozen=True)
class BadLine:
    """A JSON element or JSON-lines line that could not be read, and why."""

    where: str  # "file:line", "file[index]" or "file['key']"
    problem: str


def _open(path: Path):
    return path.open(encoding="utf-8-sig", errors="surrogateescape")


def _undecodable(text: str, start: int = 0, end: int | None = None) -> str | None:
    """Why a decoded span is not valid UTF-8 ('byte 0xff'), or None when it is."""
    m = _UNDECODABLE.search(text, start, len(text) if end is None else end)
    return None if m is None else f"invalid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x})"


def _too_deep(value: Any) -> bool:
    """Nesting deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def _problem(value: Any) -> str | None:
    return f"nested deeper than {MAX_DEPTH} levels" if _too_deep(value) else None


class _Damage(Exception):
    """Where a JSON document stops being readable."""


class _Cursor:
    """A growing window over a text file with just enough to decode one JSON value at a time."""

    def __init__(self, fh, path: Path, chunk_chars: int):
        self.fh, self.path, self.chunk_chars = fh, path, chunk_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.dropped_bytes, self.dropped_lines = 0, 0  # what was consumed and dropped from the window
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(self.chunk_chars)
        if not chunk:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:  # drop what has been consumed
            done = self.buf[: self.pos]
            self.dropped_bytes += len(done.encode("utf-8", "surrogateescape"))
            self.dropped_lines += done.count("\n")
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += chunk
        return True

    def where(self, pos: int | None = None) -> str:
        """'line L, byte B' of a window position, the cursor's by default (bytes after a byte-order mark)."""
        pos = self.pos if pos is None else min(pos, len(self.buf))
        line = self.dropped_lines + self.buf.count("\n", 0, pos) + 1
        byte = self.dropped_bytes + len(self.buf[:pos].encode("utf-8", "surrogateescape"))
        return f"line {line}, byte {byte}"

    def damage(self, problem: str, pos: int | None = None) -> _Damage:
        return _Damage(f"{problem} at {self.where(pos)}; the rest of the file is not read")

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
            found = "end of file (the file is cut off)" if not c else repr(c)
            raise self.damage(f"expected one of {list(chars)}, found {found}")
        self.pos += 1
        return c

    def value(self) -> tuple[Any, str | None]:
        """The next value, and why it cannot be used (None when it can): invalid UTF-8 or too deep."""
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise self.damage(f"malformed JSON: {exc.msg[:1].lower()}{exc.msg[1:]}", exc.pos) from None
            except RecursionError:
                raise self.damage("JSON nested too deeply to parse") from None
            # A number that ends exactly at the end of the window may continue in the next chunk.
            if end == len(self.buf) and self._more():
                continue
            problem = _undecodable(self.buf, self.pos, end) or _problem(obj)
            if problem:
                problem = f"{problem} at {self.where()}"
            self.pos = end
            return obj, problem


def iter_json_document(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str | int, Any]]:
    """(index, element) for a top-level array, (key, value) for a top-level object; streamed. An element that
    cannot be read comes back as a BadLine in its place; damage that ends the document is the last one."""
    path = Path(path)
    index: int = 0
    key: Any = None
    with _open(path) as fh:
        cur = _Cursor(fh, path, chunk_chars)
        try:
            opening = cur.expect("[{")
            closing = "]" if opening == "[" else "}"
            if cur.peek() == closing:
                cur.pos += 1
            else:
                while True:
                    if opening == "{":
                        key, key_problem = cur.value()
                        if not isinstance(key, str):
                            raise cur.damage("object key is not a string")
                        cur.expect(":")
                        value, problem = cur.value()
                        problem = key_problem or problem
                        yield key, (BadLine(f"{path.name}[{key!r}]", problem) if problem else value)
                        key = None
                    else:
                        value, problem = cur.value()
                        yield index, (BadLine(f"{path.name}[{index}]", problem) if problem else value)
                    index += 1
                    if cur.expect("," + closing) == closing:
                        break
            if cur.peek():
                raise cur.damage("unexpected content after the top-level JSON value")
        except _Damage as exc:
            place = f"{path.name}[{key!r}]" if isinstance(key, str) else f"{path.name}[{index}]"
            yield (key if isinstance(key, str) else index), BadLine(place, str(exc))


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict | BadLine]]:
    """(line number, parsed row) per non-empty line; a line that cannot be read comes back as a BadLine."""
    path = Path(path)
    with _open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            problem = _undecodable(line)
            if problem:
                yield lineno, BadLine(where, problem)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, BadLine(where, f"malformed JSON: {exc.msg}")
                continue
            except RecursionError:
                yield lineno, BadLine(where, "JSON nested too deeply to parse")
                continue
            problem = _problem(row)
            yield lineno, (BadLine(where, problem) if problem else row)


def first_char(path: str | Path) -> str:
    """The first non-whitespace character of a text file ('' when empty): tells a JSON array from JSON lines."""
    with _open(Path(path)) as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip(_WHITESPACE + "\ufeff")
            if stripped:
                return stripped[0]


def iter_json_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Rows of a file that is either a JSON array or JSON lines (sniffed from its first character), streamed.

    Yields (where, row): `where` is "file[index]" or "file:line"; a row that cannot be read comes back as a
    BadLine. (A document keyed by id, like TabMWP's, is read with `iter_json_document`: a one-line keyed document
    and a one-line JSON-lines file cannot be told apart.)
    """
    path = Path(path)
    if first_char(path) == "[":
        for index, row in iter_json_document(path):
            yield f"{path.name}[{index}]", row
        return
    for lineno, row in iter_json_lines(path):
        yield f"{path.name}:{lineno}", row
