"""A node's local copies of remote directories: checkpoints, base models and task data that live under a pyarrow
filesystem URI (s3://, gs://), brought to local disk once per node because engines, DeepSpeed and image readers
load from local files.

An entry is keyed by the URI and its content: the publish id of a directory r3v published (r3v_ray/run/store.py), else
the names, sizes and modification times of its files. A re-export of the same round is therefore a new entry,
never a stale copy. Entries are published into the cache like any directory (whole or not at all), the least
recently used are removed beyond `storage.cache_max_gb`, and a file lock keeps two processes on one node from
fetching the same thing twice. Local paths and file:// URIs are used where they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r3v_ray.run import store

log = logging.getLogger(__name__)


def _settings(storage: Any) -> tuple[Path, float]:
    """(cache directory, size cap in bytes) from a StorageConfig, its dict form, or None (the defaults)."""
    from r3v_ray.config import StorageConfig

    if storage is None:
        storage = StorageConfig()
    elif isinstance(storage, dict):
        storage = StorageConfig.model_validate(storage)
    return Path(os.path.expanduser(storage.cache_dir)), storage.cache_max_gb * 1024**3


def content_key(uri: str) -> str:
    """A name for the content now at `uri`: <dir name>-<hash of the URI and its publish id or file listing>."""
    marker = store.published(uri)
    if marker is not None:
        store.check_published(uri, marker)  # refuses a directory that is half uploaded or being replaced
        signature = f"published {marker['id']}"
    else:
        fs, path = store.resolve(uri)
        files = store.list_files(fs, path)
        if not files:
            raise store.StorageError(f"{uri}: no files there")
        signature = json.dumps(sorted((rel, i.size, i.mtime_ns) for rel, i in files.items()))
    digest = hashlib.sha256(f"{uri.rstrip('/')}\n{signature}".encode()).hexdigest()[:20]
    return f"{uri.rstrip('/').rpartition('/')[2] or 'root'}-{digest}"


@contextmanager
def _locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _evict(cache: Path, keep: str, cap: float) -> None:
    """Remove the least recently used entries (never `keep`) until the cache fits `cap`; stale temporaries of
    interrupted fetches go first (only the lock holder writes any)."""
    for tmp in cache.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    entries = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime)
    sizes = {p: _size(p) for p in entries}
    total = sum(sizes.values())
    for entry in entries:
        if total <= cap:
            break
        if entry.name == keep:
            continue
        log.info("checkpoint cache: removing %s (%.1f MB, least recently used)", entry, sizes[entry] / 1e6)
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
    if total > cap:
        log.warning("checkpoint cache %s holds %.1f GB, over storage.cache_max_gb; the entry in use (%s) stays",
                    cache, total / 1024**3, keep)


def localize(uri: str, storage: Any = None) -> str:
    """A local directory holding what is at `uri` now (fetched once per node and content)."""
    if not store.is_uri(uri):
        return os.path.abspath(uri) if os.path.exists(uri) else uri  # a local path, or a hub name
    if store.is_local(uri):
        return store.resolve(uri)[1]
    cache, cap = _settings(storage)
    with _locked(cache):
        key = content_key(uri)
        target = cache / key
        if (target / store.PUBLISHED).is_file():
            os.utime(target)  # most recently used
            return str(target)
        started = time.time()
        src_fs, src = store.resolve(uri)
        # The copy is checked file by file against the source's marker (sizes and checksums, taken as the bytes
        # pass): a damaged object is refused here, before any engine loads it.
        marker = store.published(uri)
        store.publish_dir(src, str(target), src_fs=src_fs, expect=marker["files"] if marker else None)
        if content_key(uri) != key:  # replaced while it was copied: what we have is neither version
            shutil.rmtree(target, ignore_errors=True)
            raise store.StorageError(f"{uri} changed while it was being copied to {cache}; try again")
        log.info("fetched %s into %s in %.1fs", uri, target, time.time() - started)
        _evict(cache, key, cap)
        return str(target)


class LocalImages:
    """Image references as this node can open them: an image URI under a remote task.data_dir becomes a path into
    the node's copy of that directory (fetched once, on first use); anything else is returned as it is."""

    def __init__(self, data_dir: str | None, storage: Any = None):
        remote = data_dir is not None and store.is_uri(data_dir) and not store.is_local(data_dir)
        self.prefix = data_dir.rstrip("/") + "/" if remote else None
        self.storage = storage
        self.local: str | None = None

    def __call__(self, image: Any) -> Any:
        if self.prefix is None or not isinstance(image, str) or not image.startswith(self.prefix):
            return image
        if self.local is None:
            self.local = localize(self.prefix.rstrip("/"), self.storage)
        return os.path.join(self.local, image[len(self.prefix):])
