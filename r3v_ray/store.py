"""Run-directory storage: a local path or a pyarrow filesystem URI (s3://, gs://, file://), with atomic writes.

A file is written to a temporary name and moved into place, so a crash never leaves a half-written file that looks
finished. A directory (a checkpoint, a built model, a node's cached copy) is published with `publish_dir`, the one
way r3v makes a directory appear whole: on a local disk a complete temporary sibling is renamed into place; object
stores have no rename, so there the files are uploaded first and a marker naming every file and its size
(PUBLISHED) is written last. Readers of directories r3v wrote trust only published ones (`published`).
Stages hand over only through these files (r3v_ray/rundir.py names them).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PUBLISHED = "r3v_published.json"  # written last into every directory publish_dir makes


class StorageError(RuntimeError):
    """A storage location that cannot be used; the message names the URI and the filesystem's error."""


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Plain paths are local and made absolute."""
    if is_uri(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs: places only the machine that wrote them can see (unless shared)."""
    return not is_uri(uri) or uri.startswith("file://")


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1].lstrip("/")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def _tmp_name(path: str, kind: str = "tmp") -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    return f"{head}/.{tail}.{kind}-{uuid.uuid4().hex[:8]}"


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


# -- directories ----------------------------------------------------------------------------------------------


def list_files(fs: pafs.FileSystem, path: str) -> dict[str, pafs.FileInfo]:
    """{path relative to `path`: FileInfo} of every file below `path` (directories left out)."""
    base = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1:]: i for i in infos if i.type == pafs.FileType.File}


def published(uri: str) -> dict | None:
    """The PUBLISHED marker of a directory publish_dir wrote ({"id", "published_at", "files": {rel: {"size"}}}),
    or None when the directory is missing or not (yet, or no longer) published."""
    try:
        return read_json(join(uri, PUBLISHED))
    except (FileNotFoundError, OSError, ValueError):
        return None


def check_published(uri: str, marker: dict | None = None) -> dict:
    """The marker, after checking that every file it names is there with its size: a directory half uploaded,
    or being replaced, is refused with a StorageError naming the first file that differs."""
    marker = marker or published(uri)
    if marker is None:
        raise StorageError(f"{uri}: not a published directory (no {PUBLISHED}: unfinished, or being replaced)")
    fs, path = resolve(uri)
    found = list_files(fs, path)
    for rel, meta in marker["files"].items():
        if rel not in found or found[rel].size != meta["size"]:
            got = found[rel].size if rel in found else "missing"
            raise StorageError(f"{uri}: {rel} is {got}, but {PUBLISHED} records {meta['size']} bytes")
    return marker


def publish_dir(src: str, dst_uri: str, src_fs: pafs.FileSystem | None = None, move: bool = False) -> dict:
    """Make the directory `src` (on `src_fs`, default local) appear whole at `dst_uri`; returns its marker.

    An older directory at dst_uri is replaced. With `move`, a local `src` on the same disk as a local destination
    is renamed instead of copied (it is consumed either way only then).
    """
    src_fs = src_fs or pafs.LocalFileSystem()
    files = {rel: {"size": info.size} for rel, info in list_files(src_fs, src).items() if rel != PUBLISHED}
    marker = {"id": uuid.uuid4().hex, "published_at": time.time(), "files": files}
    fs, dst = resolve(dst_uri)
    dst = dst.rstrip("/")
    if isinstance(fs, pafs.LocalFileSystem):
        parent = dst.rpartition("/")[0]
        fs.create_dir(parent, recursive=True)
        if move and isinstance(src_fs, pafs.LocalFileSystem):
            tmp = src
        else:
            tmp = _tmp_name(dst)
            fs.create_dir(tmp, recursive=True)
            pafs.copy_files(src, tmp, source_filesystem=src_fs, destination_filesystem=fs)
        _check_copy(fs, tmp, files, dst_uri)
        with fs.open_output_stream(f"{tmp}/{PUBLISHED}") as fh:
            fh.write(json.dumps(marker, indent=2, sort_keys=True).encode())
        old = None
        if fs.get_file_info(dst).type != pafs.FileType.NotFound:
            old = _tmp_name(dst, "old")
            fs.move(dst, old)
        fs.move(tmp, dst)  # the one step that makes it visible
        if old:
            fs.delete_dir(old)
        return marker
    # Object store: withdraw the old marker first (readers stop trusting the old files), upload, marker last.
    if fs.get_file_info(f"{dst}/{PUBLISHED}").type != pafs.FileType.NotFound:
        fs.delete_file(f"{dst}/{PUBLISHED}")
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(dst)
    fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=fs)
    _check_copy(fs, dst, files, dst_uri)
    write_json(join(dst_uri, PUBLISHED), marker)
    return marker


def _check_copy(fs: pafs.FileSystem, path: str, files: dict, where: str) -> None:
    found = list_files(fs, path)
    for rel, meta in files.items():
        if rel not in found or found[rel].size != meta["size"]:
            raise StorageError(f"publishing {where}: {rel} arrived as {found[rel].size if rel in found else 'nothing'}"
                               f", expected {meta['size']} bytes (the source changed while it was copied?)")


def copy_tree(src_uri: str, dst_uri: str) -> None:
    """Copy every file below src_uri to the same relative paths below dst_uri (no marker, no swap: callers
    write their own record last, as a round's manifest)."""
    src_fs, src = resolve(src_uri)
    fs, dst = resolve(dst_uri)
    fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=fs)


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def check_access(uri: str, what: str = "storage.root") -> None:
    """Write, read back and delete a probe file under `uri`; a StorageError names the URI and the filesystem's
    error (no such bucket, access denied, endpoint unreachable, ...). Cheap: run it before anything starts."""
    probe = join(uri, f".r3v-access-probe-{uuid.uuid4().hex[:8]}")
    try:
        fs, path = resolve(probe)
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(path) as fh:
            fh.write(b"r3v")
        with fs.open_input_stream(path) as fh:
            if fh.read() != b"r3v":
                raise OSError("the probe file read back differently")
        fs.delete_file(path)
    except Exception as exc:
        raise StorageError(f"{what} {uri} cannot be used: {type(exc).__name__}: {exc}") from None
