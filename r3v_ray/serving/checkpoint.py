"""Which checkpoint to serve: a directory given directly, or a run directory and round (newest by default).

Run directories may live on a pyarrow filesystem (s3://, gs://); each replica brings a remote checkpoint to its
node's local disk through the node's cache (r3v_ray/cache.py) before the engine loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r3v_ray import store
from r3v_ray.rundir import MODEL_FILES, RunDir, round_of_checkpoint


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


def is_checkpoint(uri: str) -> bool:
    return any(store.exists(store.join(uri, name)) for name in MODEL_FILES)


def rounds_with_checkpoints(run_dir: str) -> list[int]:
    run = RunDir(run_dir)
    return [k for k in run.rounds() if run.round(k).checkpoint_ready()]


def resolve(checkpoint: str | None = None, run_dir: str | None = None, round_: int | None = None) -> ServedModel:
    """A checkpoint directory, or run_dir/round-<k>/checkpoint (newest round when `round_` is None). Storage that
    cannot be read (no such bucket, no credentials, endpoint down) is a CheckpointError naming the URI."""
    try:
        return _resolve(checkpoint, run_dir, round_)
    except (OSError, store.StorageError) as exc:
        raise CheckpointError(f"{checkpoint or run_dir}: cannot be read ({type(exc).__name__}: {exc})") from None


def _resolve(checkpoint: str | None, run_dir: str | None, round_: int | None) -> ServedModel:
    if bool(checkpoint) == bool(run_dir):
        raise CheckpointError("give either a checkpoint directory or a run directory (with an optional round)")
    if checkpoint:
        if not is_checkpoint(checkpoint):
            raise CheckpointError(f"{checkpoint}: not a model checkpoint (no {' or '.join(MODEL_FILES)})")
        found = round_of_checkpoint(checkpoint)  # .../round-002/checkpoint: remember the round it came from
        served_round = round_ if round_ is not None else (found[1] if found else None)
        return ServedModel(checkpoint, served_round, found[0].uri if found else None)
    if not store.exists(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    if round_ is None:
        rounds = rounds_with_checkpoints(run_dir)
        if not rounds:
            raise CheckpointError(f"{run_dir}: no round-<k>/checkpoint with a model in it")
        round_ = rounds[-1]
    target = RunDir(run_dir).round(round_)
    if not target.checkpoint_ready():
        raise CheckpointError(f"{target.checkpoint}: round {round_} has no model checkpoint")
    return ServedModel(target.checkpoint, round_, run_dir)
