"""Which checkpoint to serve: a directory given directly, or a run directory and round (newest by default).

A run directory's newest round is the newest whose manifest records its train stage done (or, in a run directory
made by hand without manifests, the newest with a model checkpoint). That round must lie inside the run directory
(no link out of it), have been made under the run's config, and hold its checkpoint as its train stage recorded it
(r3v_ray/run/layout.py): otherwise it is refused, naming the path, rather than an older round served in its place.
Run directories may live on a pyarrow filesystem (s3://, gs://); each replica brings a remote checkpoint to its
node's local disk through the node's cache (r3v_ray/run/cache.py, which checks every file's checksum as it copies)
before the engine loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from r3v_ray.run import store
from r3v_ray.run.manifest import RunDirError
from r3v_ray.run.layout import MODEL_FILES, RoundDir, RunDir, round_of_checkpoint


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


def newest_trained_round(run_dir: str) -> int | None:
    """The newest round whose train stage is done (by its manifest; a round without one: a model checkpoint there);
    whether its checkpoint is intact is `check_round`'s question. Older rounds' manifests are not read."""
    run = RunDir(run_dir)
    return next((k for k in reversed(run.rounds()) if _claims_model(run.round(k))), None)


def _claims_model(round_dir: RoundDir) -> bool:
    manifest = round_dir.manifest()
    if manifest is not None:
        return manifest.done("train")
    return is_checkpoint(round_dir.checkpoint)


def check_round(round_dir: RoundDir) -> None:
    """A CheckpointError unless the round's checkpoint can be served: its train stage done and the checkpoint as
    that stage recorded it (every file's size; on a local disk its checksum too)."""
    k = round_dir.index
    manifest = round_dir.manifest()
    if manifest is None:
        if not round_dir.checkpoint_ready():
            raise CheckpointError(f"{round_dir.checkpoint}: round {k} has no model checkpoint")
        return
    if not manifest.done("train"):
        raise CheckpointError(f"{round_dir.checkpoint}: round {k} has no model checkpoint (its train stage is not "
                              "done)")
    problem = round_dir.damage("train", manifest)
    if problem:
        raise CheckpointError(
            f"{problem}: round {k}'s train stage is recorded done, but its checkpoint is not as it recorded, so round "
            f"{k} is not served (nor an older round in its place). Redo its training (r3v run --config ... "
            f"--from-round {k} --force), restore the checkpoint, or serve an earlier round by name (--round)"
        )


def resolve(checkpoint: str | None = None, run_dir: str | None = None, round_: int | None = None) -> ServedModel:
    """A checkpoint directory, or run_dir/round-<k>/checkpoint (newest round when `round_` is None). Storage that
    cannot be read (no such bucket, no credentials, endpoint down) or a manifest that cannot be read is a
    CheckpointError naming the URI."""
    try:
        return _resolve(checkpoint, run_dir, round_)
    except (OSError, store.StorageError) as exc:
        raise CheckpointError(f"{checkpoint or run_dir}: cannot be read ({type(exc).__name__}: {exc})") from None
    except RunDirError as exc:  # a manifest that cannot be read, a round that is a link out of the run
        raise CheckpointError(str(exc)) from None


def _resolve(checkpoint: str | None, run_dir: str | None, round_: int | None) -> ServedModel:
    if bool(checkpoint) == bool(run_dir):
        raise CheckpointError("give either a checkpoint directory or a run directory (with an optional round)")
    # A relative path is this process's: the replicas, on a cluster started elsewhere, run in another directory.
    checkpoint, run_dir = (p if not p or store.is_uri(p) else os.path.abspath(p) for p in (checkpoint, run_dir))
    if checkpoint:
        if not is_checkpoint(checkpoint):
            raise CheckpointError(f"{checkpoint}: not a model checkpoint (no {' or '.join(MODEL_FILES)})")
        found = round_of_checkpoint(checkpoint)  # .../round-002/checkpoint: remember the round it came from
        served_round = round_ if round_ is not None else (found[1] if found else None)
        return ServedModel(checkpoint, served_round, found[0].uri if found else None)
    if not store.exists(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    if round_ is None:
        round_ = newest_trained_round(run_dir)
        if round_ is None:
            raise CheckpointError(f"{run_dir}: no round-<k>/checkpoint with a model in it")
    run = RunDir(run_dir)
    target = run.round(round_)
    check_round(target)
    check_config(run, target)
    return ServedModel(target.checkpoint, round_, run_dir)


def check_config(run: RunDir, round_dir: RoundDir) -> None:
    """A CheckpointError unless the round was made under the run's config (config.yaml), as `r3v run` requires
    before building on it: a round made under another config is not served under this run's name."""
    manifest = round_dir.manifest()
    if manifest is None or not store.exists(run.config):
        return
    import yaml

    from r3v_ray.config import config_from_dict

    digest = config_from_dict(yaml.safe_load(store.read_text(run.config)) or {}, run.config).digest()
    if manifest.config_digest != digest:
        raise CheckpointError(
            f"{round_dir.manifest_uri}: round {round_dir.index} was made under config {manifest.config_digest}, but "
            f"the run's config.yaml is {digest} (another run's round, or one made before a config change), so it "
            f"is not served as this run's. Serve it by path (--checkpoint {round_dir.checkpoint}) to serve it anyway")
