"""Run-directory storage: a local path or a pyarrow filesystem URI (s3://, gs://, file://), with atomic writes.

A file is written to a temporary name and moved into place, so a crash never leaves a half-written file that looks
finished. A directory (a checkpoint, a built model, a node's cached copy) is published with `publish_dir`, the one
way r3v makes a directory appear whole: on a local disk a complete temporary sibling is renamed into place; object
stores have no rename, so there the files are uploaded first and a marker naming every file, its size and its
checksum (PUBLISHED) is written last. Readers of directories r3v wrote trust only published ones (`published`).
Stages hand over only through these files (r3v_ray/run/layout.py names them).

Integrity: every write returns the record {"size", "sha256"} of what it wrote, hashed from the bytes as they are
written (a directory's records are in its marker), and `recording` collects the records of a block's writes for
the round manifest (r3v_ray/run/layout.py decides what a stage's outputs are). `check_file` and `check_published`
compare what is stored with a record: sizes from one listing, checksums by reading, and reads given a record
(`read_parquet(uri, expect=...)`) check the bytes they read anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PUBLISHED = "r3v_published.json"  # written last into every directory publish_dir makes
CHUNK = 8 << 20  # bytes per read when copying or hashing a file
COPY_THREADS = 8  # files copied at once by publish_dir (object stores are slow per file, fast in parallel)


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


# -- integrity records ----------------------------------------------------------------------------------------

_recorders: ContextVar[tuple[dict, ...]] = ContextVar("r3v_store_recorders", default=())


def record_of(data) -> dict:
    """{"size", "sha256"} of bytes (or any buffer)."""
    view = memoryview(data)
    return {"size": view.nbytes, "sha256": hashlib.sha256(view).hexdigest()}


def _key(uri: str) -> str:
    return uri.rstrip("/") if is_uri(uri) else os.path.abspath(uri)


@contextmanager
def recording() -> Iterator[dict[str, dict]]:
    """{location: record} of every file and directory this process writes through this module inside the block
    (a file's record {"size", "sha256"}, a published directory's {"published": id, "sha256": digest}; local paths
    absolute, URIs as written). Blocks nest; each sees the writes made inside it."""
    written: dict[str, dict] = {}
    token = _recorders.set(_recorders.get() + (written,))
    try:
        yield written
    finally:
        _recorders.reset(token)


def _note(uri: str, record: dict) -> dict:
    for written in _recorders.get():
        written[_key(uri)] = record
    return record


def note_written(uri: str, record: dict) -> dict:
    """Record a file another process wrote (a Ray task) in this process's `recording` blocks, after it is in place:
    `record` is what that process hashed as it wrote."""
    return _note(uri, record)


def temp_sibling(uri: str, kind: str = "tmp") -> str:
    """A fresh hidden name beside `uri`, on the same filesystem (for work that is moved or dropped afterwards)."""
    head, _, tail = uri.rstrip("/").rpartition("/")
    return f"{head or '.'}/.{tail}.{kind}-{uuid.uuid4().hex[:8]}"


def key_of(uri: str) -> str:
    """The form `recording` names a location in."""
    return _key(uri)


def write_bytes(uri: str, data: bytes) -> dict:
    """Write `data` atomically; returns its record. A write that fails (a full disk) leaves no temporary file and
    raises a StorageError naming the file and the bytes it needed."""
    fs, path = resolve(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    try:
        with fs.open_output_stream(tmp) as fh:
            fh.write(data)
        fs.move(tmp, path)
    except OSError as exc:
        _discard(fs, tmp)
        raise write_failed(uri, memoryview(data).nbytes, exc) from None
    return _note(uri, record_of(data))


def write_failed(uri: str, size: int, exc: OSError) -> StorageError:
    """One line for a write that failed: where, how many bytes it needed, and (on a local disk) how many are free."""
    free = ""
    if is_local(uri):
        try:
            free = f"; {shutil.disk_usage(os.path.dirname(resolve(uri)[1])).free} bytes free there"
        except OSError:
            pass
    reason = exc.strerror or str(exc).splitlines()[0]
    return StorageError(f"cannot write {uri} ({size} bytes needed{free}): {reason}")


def _discard(fs: pafs.FileSystem, path: str) -> None:
    """Remove a temporary file or directory of a write that failed; best effort (the disk may be what failed)."""
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type != pafs.FileType.NotFound:
            fs.delete_file(path)
    except OSError:
        pass


def write_text(uri: str, text: str) -> dict:
    return write_bytes(uri, text.encode())


def write_json(uri: str, obj: Any) -> dict:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_bytes(uri: str, expect: dict | None = None) -> bytes:
    """The file's bytes; with `expect` (a record), checked against it (StorageError naming the file)."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as fh:
        data = fh.read()
    if expect is not None:
        _compare(uri, record_of(data), expect)
    return data


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_parquet(uri: str, table: pa.Table) -> dict:
    """Write `table` atomically; returns the file's record (hashed from the encoded bytes before they are sent)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return write_bytes(uri, sink.getvalue())


def read_parquet(uri: str, expect: dict | None = None) -> pa.Table:
    """The table; with `expect` (a record), the bytes read are checked against it first (no second read)."""
    if expect is not None:
        return pq.read_table(pa.BufferReader(read_bytes(uri, expect)))
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs)


def _compare(uri: str, found: dict, expect: dict, what: str = "recorded") -> None:
    if found["size"] != expect["size"]:
        raise StorageError(f"{uri} is {found['size']} bytes, but {expect['size']} were {what}")
    if expect.get("sha256") and found.get("sha256") and found["sha256"] != expect["sha256"]:
        raise StorageError(f"{uri} has changed: its sha256 is {found['sha256'][:12]}..., but "
                           f"{expect['sha256'][:12]}... was {what}")


def _stream(src_fs: pafs.FileSystem, src: str, fs: pafs.FileSystem | None = None, dst: str | None = None) -> dict:
    """The record of the file `src`, read in chunks; with `fs` and `dst`, each chunk is also written there (a copy
    hashed as it passes, reading the source once)."""
    if fs is not None:
        fs.create_dir(dst.rpartition("/")[0], recursive=True)
    h, size = hashlib.sha256(), 0
    with src_fs.open_input_stream(src) as fin, (fs.open_output_stream(dst) if fs is not None else _nowhere()) as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            if fout is not None:
                fout.write(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


@contextmanager
def _nowhere() -> Iterator[None]:
    yield None


# (path, size, mtime) -> sha256 verified by this process, for local files: what a process trusts once (a local
# checkpoint a resumed run checks, then samples from) is not read again unless it changed since. Object stores'
# modification times have a resolution of seconds, so their files are read again.
_verified: dict[tuple, str] = {}


def check_file(uri: str, expect: dict, checksum: bool = True, info: pafs.FileInfo | None = None) -> None:
    """Compare the file at `uri` with its record: its size (from the listing `info`, else one look-up) and, with
    `checksum`, its sha256 (by reading it, once per process while unchanged). A StorageError names the file."""
    fs, path = resolve(uri)
    info = info or fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri} is missing")
    if info.size != expect["size"]:
        raise StorageError(f"{uri} is {info.size} bytes, but {expect['size']} were recorded")
    if not checksum or not expect.get("sha256"):
        return
    memo = (path, info.size, info.mtime_ns) if isinstance(fs, pafs.LocalFileSystem) else None
    if memo and _verified.get(memo) == expect["sha256"]:
        return
    _compare(uri, _stream(fs, path), expect)
    if memo:
        _verified[memo] = expect["sha256"]


# -- directories ----------------------------------------------------------------------------------------------


def list_files(fs: pafs.FileSystem, path: str) -> dict[str, pafs.FileInfo]:
    """{path relative to `path`: FileInfo} of every file below `path` (directories left out)."""
    base = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1:]: i for i in infos if i.type == pafs.FileType.File}


def published(uri: str) -> dict | None:
    """The PUBLISHED marker of a directory publish_dir wrote ({"id", "published_at", "files": {rel: {"size",
    "sha256"}}}), or None when the directory is missing or not (yet, or no longer) published."""
    try:
        return read_json(join(uri, PUBLISHED))
    except (FileNotFoundError, OSError, ValueError):
        return None


def content_digest(marker: dict) -> str:
    """One checksum for a published directory's content: its files' names, sizes and checksums (not the publish id,
    which is new at every publish: the same content published again has the same digest)."""
    files = sorted((rel, meta["size"], meta.get("sha256")) for rel, meta in marker["files"].items())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def dir_record(marker: dict) -> dict:
    """What a round manifest records of a published directory (its files' records are in the marker)."""
    return {"published": marker["id"], "sha256": content_digest(marker)}


def check_published(uri: str, marker: dict | None = None, checksums: bool = False) -> dict:
    """The marker, after checking that every file it names is there with its size (one listing) and, with
    `checksums`, its sha256 (by reading it): a directory half uploaded, being replaced or damaged is refused with
    a StorageError naming the first file that differs."""
    marker = marker or published(uri)
    if marker is None:
        raise StorageError(f"{uri}: not a published directory (no {PUBLISHED}: unfinished, or being replaced)")
    fs, path = resolve(uri)
    found = list_files(fs, path)
    for rel, meta in sorted(marker["files"].items()):
        if rel not in found or found[rel].size != meta["size"]:
            got = found[rel].size if rel in found else "missing"
            raise StorageError(f"{uri}: {rel} is {got}, but {PUBLISHED} records {meta['size']} bytes")
    if checksums:
        for rel, meta in sorted(marker["files"].items()):
            try:
                check_file(join(uri, rel), meta, info=found[rel])
            except StorageError as exc:
                raise StorageError(f"{uri}: {exc} (in {PUBLISHED})") from None
    return marker


def publish_dir(src: str, dst_uri: str, src_fs: pafs.FileSystem | None = None, move: bool = False,
                expect: dict | None = None) -> dict:
    """Make the directory `src` (on `src_fs`, default local) appear whole at `dst_uri`; returns its marker.

    Every file's sha256 is taken from the bytes as they are copied (read once; a rename reads them only to hash).
    With `expect` ({rel: record}, e.g. the source's own marker's files), a file that arrives with another size or
    checksum is refused before the directory appears. An older directory at dst_uri is replaced. With `move`, a
    local `src` on the same disk as a local destination is renamed instead of copied (it is consumed either way
    only then). A copy that fails (a full disk) is removed and ends in a StorageError naming the place and the
    bytes it needed.
    """
    src_fs = src_fs or pafs.LocalFileSystem()
    src = src.rstrip("/")
    infos = {rel: info for rel, info in list_files(src_fs, src).items() if rel != PUBLISHED}
    rels = sorted(infos)
    fs, dst = resolve(dst_uri)
    dst = dst.rstrip("/")
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        fs.create_dir(dst.rpartition("/")[0], recursive=True)
        rename = move and isinstance(src_fs, pafs.LocalFileSystem)
        target = src if rename else _tmp_name(dst)
    else:
        rename, target = False, dst
        # Object store: withdraw the old marker first (readers stop trusting the old files), upload, marker last.
        if fs.get_file_info(f"{dst}/{PUBLISHED}").type != pafs.FileType.NotFound:
            fs.delete_file(f"{dst}/{PUBLISHED}")
        if fs.get_file_info(dst).type != pafs.FileType.NotFound:
            fs.delete_dir_contents(dst)
    try:
        fs.create_dir(target, recursive=True)
        if rename:
            files = dict(_parallel(lambda rel: (rel, _stream(fs, f"{src}/{rel}")), rels))
        else:
            files = dict(_parallel(lambda rel: (rel, _stream(src_fs, f"{src}/{rel}", fs, f"{target}/{rel}")), rels))
        for rel in rels if expect is not None else ():
            if rel in expect:
                try:
                    _compare(f"{src}/{rel}", files[rel], expect[rel], f"recorded in {PUBLISHED} of the source")
                except StorageError as exc:
                    if local and not rename:
                        fs.delete_dir(target)
                    raise StorageError(f"publishing {dst_uri}: {exc} (the stored file is damaged)") from None
        _check_copy(fs, target, files, dst_uri)
        marker = {"id": uuid.uuid4().hex, "published_at": time.time(), "files": files}
        if local:
            with fs.open_output_stream(f"{target}/{PUBLISHED}") as fh:
                fh.write(json.dumps(marker, indent=2, sort_keys=True).encode())
            old = None
            if fs.get_file_info(dst).type != pafs.FileType.NotFound:
                old = _tmp_name(dst, "old")
                fs.move(dst, old)
            fs.move(target, dst)  # the one step that makes it visible
            if old:
                fs.delete_dir(old)
        else:
            write_json(join(dst_uri, PUBLISHED), marker)
        _note(dst_uri, dir_record(marker))
        return marker
    except OSError as exc:
        if local and not rename:
            _discard(fs, target)
        raise write_failed(dst_uri, sum(i.size for i in infos.values()), exc) from None


def _parallel(fn, items: list) -> list:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(COPY_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


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
