"""Where the benchmark readers get their rows and images: split-name aliases, data-file lookup, parquet and
`datasets` directories (offline, streamed), image-path resolution, embedded images written to files, and the one
loop that turns rows into records while counting skips.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from r3v_ray.tasks.base import ReadReport, Record, RecordError, posix_path
from r3v_ray.tasks.jsonstream import BadLine, iter_json_rows

# Releases name the held-out split differently (TabMWP and M3CoT 'dev', Hugging Face 'validation', ChartQA 'val').
_SPLIT_GROUPS = (("dev", "validation", "val"),)


def split_names(split: str) -> tuple[str, ...]:
    """The split and the names other releases use for it, the asked-for name first."""
    for group in _SPLIT_GROUPS:
        if split in group:
            return (split,) + tuple(s for s in group if s != split)
    return (split,)


def find_split_file(directory: Path, patterns: Iterable[str], split: str, what: str) -> Path:
    """The first existing `directory/pattern.format(split=name)` over the split's names; a clear error otherwise."""
    tried = []
    for name in split_names(split):
        for pattern in patterns:
            candidate = directory / pattern.format(split=name)
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise FileNotFoundError(f"{what}: no file for split {split!r}; looked for: {', '.join(tried)}")


def find_split_file_or_none(directory: Path, patterns: Iterable[str], split: str) -> Path | None:
    try:
        return find_split_file(directory, patterns, split, "")
    except FileNotFoundError:
        return None


# -- rows -> records -------------------------------------------------------------------------------------------
def build_records(
    rows: Iterable[tuple[str, Any]], build: Callable[[int, dict], Record], report: ReadReport
) -> Iterator[Record]:
    """Records from (where, row) pairs; a row that is not an object or that `build` refuses is counted skipped.

    `build(index, row)` gets the row's position (for releases without ids) and raises RecordError to refuse.
    """
    for index, (where, row) in enumerate(rows):
        if isinstance(row, BadLine):
            report.skip(row.where, "<json>", row.problem)
            continue
        if not isinstance(row, dict):
            report.skip(where, "<row>", f"expected a JSON object, found {type(row).__name__}")
            continue
        try:
            yield build(index, row)
        except RecordError as exc:
            report.skip_error(exc)


def text_field(row: dict, name: str, record_id: str, *names: str) -> str:
    """A required non-empty text field (the first of `name, *names` present); numbers are taken as text."""
    for key in (name, *names):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, (list, dict)):
            raise RecordError(record_id, key, f"expected text, found {type(value).__name__}")
        text = str(value).strip()
        if text:
            return text
    raise RecordError(record_id, name, "missing or empty")


def choices_field(row: dict, record_id: str, name: str = "choices") -> list[str] | None:
    value = row.get(name)
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(c, (str, int, float)) for c in value):
        raise RecordError(record_id, name, "expected a list of option texts")
    return [str(c).strip() for c in value]


# -- images ----------------------------------------------------------------------------------------------------
def resolve_image(name: str, search_dirs: Iterable[Path]) -> Path | None:
    """An existing image file: `name` itself when absolute, else the first `dir/name` that exists. A name written
    with backslashes ('images\\a.png', from Windows-made release files) also resolves with '/' separators."""
    names = [name] + ([posix_path(name)] if "\\" in name else [])
    for each in names:
        path = Path(each)
        if path.is_absolute():
            if path.is_file():
                return path
            continue
        for directory in search_dirs:
            candidate = Path(directory) / each
            if candidate.is_file():
                return candidate
    return None


def require_image(record_id: str, name: str | None, search_dirs: list[Path], fallback_names: Iterable[str] = ()) -> str:
    """The resolved path of a record's image (`name`, else the first `fallback_names` found); RecordError if none."""
    if not name:
        raise RecordError(record_id, "image", "missing")
    found = resolve_image(name, search_dirs)
    for other in fallback_names:
        found = found or resolve_image(other, search_dirs)
    if found is None:
        looked = ", ".join(str(d) for d in search_dirs) or "."
        raise RecordError(record_id, "image", f"file not found: {name} (looked in {looked})")
    return str(found.absolute())  # Ray workers may run in another working directory


def _safe_name(record_id: str) -> str:
    digest = hashlib.sha1(record_id.encode()).hexdigest()[:8]  # keeps ids that differ only in odd characters apart
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', record_id)[:80]}-{digest}"


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    return ".img"  # PIL tells the format from the content, not the name


def write_image_bytes(data: bytes, record_id: str, cache_dir: Path) -> Path:
    """Write an embedded image once (atomically) under `cache_dir`, named after its record."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{_safe_name(record_id)}{_suffix(data)}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target.absolute()


def image_name(value: Any, record_id: str, cache_dir: Path) -> str | None:
    """An image reference as a path: a path string as is; embedded bytes ({'bytes', 'path'} as `datasets` and
    parquet store them, raw bytes, or a PIL image) written to a file under `cache_dir`."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        if value.get("bytes"):
            return str(write_image_bytes(bytes(value["bytes"]), record_id, cache_dir))
        return value.get("path") or None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return str(write_image_bytes(bytes(value), record_id, cache_dir))
    if hasattr(value, "save"):  # a PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return str(write_image_bytes(buf.getvalue(), record_id, cache_dir))
    raise RecordError(record_id, "image", f"unsupported image value of type {type(value).__name__}")


# -- parquet and `datasets` directories ------------------------------------------------------------------------
def iter_parquet_rows(path: str | Path, batch_rows: int = 256) -> Iterator[tuple[str, dict]]:
    """(where, row) of a parquet file, read one record batch at a time."""
    import pyarrow.parquet as pq

    path = Path(path)
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            yield f"{path.name}[{index}]", row
            index += 1


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def iter_datasets_rows(path: str | Path, split: str) -> Iterator[tuple[str, dict]]:
    """(where, row) of one split of a local `datasets` directory: a `save_to_disk` folder, or a folder of data
    files (parquet, json, csv; e.g. a downloaded hub snapshot) loaded with `load_dataset` in streaming mode.
    Never downloads: the caller's environment sets HF_DATASETS_OFFLINE. Image columns come back undecoded
    ({'bytes', 'path'}), so no image is decoded while reading."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory of a `datasets` dataset")
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            names = [s for s in split_names(split) if s in loaded]
            if not names:
                raise FileNotFoundError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
            loaded = loaded[names[0]]
        ds = loaded
    else:
        last: Exception | None = None
        for name in split_names(split):
            try:
                ds = datasets.load_dataset(str(path), split=name, streaming=True)
                break
            except (ValueError, KeyError, FileNotFoundError) as exc:  # unknown split name: try its aliases
                last = exc
        else:
            raise FileNotFoundError(f"{path}: cannot load split {split!r} with `datasets`: {last}") from last
    features = ds.features or {}
    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    for index, row in enumerate(ds):
        yield f"{split}[{index}]", row


def json_or_datasets_rows(
    path: Path, patterns: Iterable[str], split: str, what: str
) -> tuple[Iterator[tuple[str, Any]], Path | None]:
    """The rows of the split's JSON / JSON-lines file when the release's file is there, else of the local
    `datasets` directory at `path`; also the data file (None for `datasets`). A miss names both places."""
    patterns = tuple(patterns)
    data_file = find_split_file_or_none(path, patterns, split)
    if data_file is not None:
        return iter_json_rows(data_file), data_file
    expected = ", ".join(p.format(split=split) for p in patterns)

    def rows() -> Iterator[tuple[str, Any]]:
        try:
            yield from iter_datasets_rows(path, split)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{what}: no {expected} in {path}, and no `datasets` data either: {exc}") from None

    return rows(), None
