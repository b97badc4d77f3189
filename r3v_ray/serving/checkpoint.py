"""Which checkpoint to serve: a directory given directly, or a run directory and round (newest by default).

Run directories may live on a pyarrow filesystem (s3://, gs://); a remote checkpoint is copied once into a local
cache before the engine loads it, because engines load from local directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from r3v_ray import store

MODEL_FILES = ("config.json", "adapter_config.json")  # a full model or an exported LoRA adapter
_ROUND_DIR = re.compile(r"round-(\d+)$")


class CheckpointError(ValueError):
    """No usable checkpoint; the message names the path."""


@dataclass
class ServedModel:
    checkpoint: str
    round: int | None
    run_dir: str | None

    def model_id(self) -> str:
        """<run name>-round-<k> (a run directory is runs/<name>), else the checkpoint directory's name."""
        if self.round is not None:
            base = Path(self.run_dir.rstrip("/")).name if self.run_dir else "r3v"
            return f"{base}-round-{self.round}"
        return Path(self.checkpoint.rstrip("/")).name or "r3v"


def round_dir(run_dir: str, round_: int) -> str:
    return store.join(run_dir, f"round-{round_:03d}")


def is_checkpoint(uri: str) -> bool:
    return any(store.exists(store.join(uri, name)) for name in MODEL_FILES)


def rounds_with_checkpoints(run_dir: str) -> list[int]:
    fs, path = store.resolve(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    found = []
    for info in infos:
        m = _ROUND_DIR.match(info.base_name)
        if m and info.type == pafs.FileType.Directory and is_checkpoint(store.join(run_dir, info.base_name, "checkpoint")):
            found.append(int(m.group(1)))
    return sorted(found)


def resolve(checkpoint: str | None = None, run_dir: str | None = None, round_: int | None = None) -> ServedModel:
    """A checkpoint directory, or run_dir/round-<k>/checkpoint (newest round when `round_` is None)."""
    if bool(checkpoint) == bool(run_dir):
        raise CheckpointError("give either a checkpoint directory or a run directory (with an optional round)")
    if checkpoint:
        if not is_checkpoint(checkpoint):
            raise CheckpointError(f"{checkpoint}: not a model checkpoint (no {' or '.join(MODEL_FILES)})")
        parent = Path(checkpoint.rstrip("/")).parent
        m = _ROUND_DIR.match(parent.name)  # .../round-002/checkpoint: remember the round it came from
        served_round = round_ if round_ is not None else (int(m.group(1)) if m else None)
        return ServedModel(checkpoint, served_round, str(parent.parent) if m else None)
    if round_ is None:
        rounds = rounds_with_checkpoints(run_dir)
        if not rounds:
            raise CheckpointError(f"{run_dir}: no round-<k>/checkpoint with a model in it")
        round_ = rounds[-1]
    path = store.join(round_dir(run_dir, round_), "checkpoint")
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: round {round_} has no model checkpoint")
    return ServedModel(path, round_, run_dir)


def localize(uri: str, cache_dir: str | None = None) -> str:
    """A local directory holding the checkpoint at `uri` (copied once, atomically, for remote URIs)."""
    if "://" not in uri:
        return uri
    cache = Path(cache_dir or os.path.expanduser("~/.cache/r3v-ray/checkpoints"))
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if target.is_dir():
        return str(target)
    tmp = cache / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    src_fs, src_path = store.resolve(uri)
    pafs.copy_files(src_path, str(tmp), source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem())
    try:
        tmp.rename(target)
    except OSError:  # another replica on this node finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
