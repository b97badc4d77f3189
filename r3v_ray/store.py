"""Run-directory storage: a local path or a pyarrow filesystem URI (s3://, gs://), with atomic writes.

Every output is written to a temporary name and moved into place, so a crash never leaves a half-written file
that looks finished. Stages hand over only through these files (DESIGN.md section 2).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Plain paths are local and made absolute."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1].lstrip("/")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_parquet(uri: str, table: pa.Table) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def read_parquet(uri: str) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs)
