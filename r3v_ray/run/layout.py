"""The run directory's layout, in one place (docs/run-directory.md):

    <storage.root>/<name>/config.yaml, report.md, accuracy.png, loss.png, samples.png
    <storage.root>/<name>/tensorboard/{rounds/, train-round-<kkk>/}   (r3v_ray/observe/tensorboard.py)
    <storage.root>/<name>/round-<kkk>/{samples.parquet, skipped.json, build-skipped.json, train.parquet,
                                      checkpoint/, checkpoint.ray/, eval/, eval.json, manifest.json}

`RunDir` and `RoundDir` name every path and answer "which stage is done" from the round manifests
(r3v_ray/run/manifest.py); the directory publish itself is r3v_ray/run/store.py's `publish_dir`. The root may be a local
path or a pyarrow filesystem URI.

What a stage wrote (STAGE_OUTPUTS) is recorded in its manifest entry as "outputs": {path in the round: {"size",
"sha256"}} for a file, {"published", "sha256"} for a published directory (whose files' sizes and checksums are in
its own marker). A stage is trusted only after `damage` finds its outputs as recorded: sizes always, checksums by
reading, except for a directory on an object store, which no stage reads in place: each node's copy of it is
checked file by file while it is made (r3v_ray/run/cache.py).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from r3v_ray.run import store
from r3v_ray.run.manifest import Manifest, RunDirError, redo_hint

log = logging.getLogger(__name__)

STAGES = ("sample", "build", "train", "eval")
# What each stage writes into its round directory (a trailing "/": everything below); only these are its outputs.
STAGE_OUTPUTS = {
    "sample": ("samples.parquet", "skipped.json"),
    "build": ("train.parquet", "build-skipped.json"),
    "train": ("checkpoint",),
    "eval": ("eval.json", "eval/"),
}
MODEL_FILES = ("config.json", "adapter_config.json")  # a full model or an exported LoRA adapter
_ROUND = re.compile(r"round-(\d+)$")


class DamagedRunError(RunDirError):
    """An output of a finished stage is missing or differs from what its manifest recorded."""


class OutsideRunError(RunDirError):
    """A round directory, or an entry of one, that resolves outside its run directory (a link to another run's)."""


def same_outputs(a: dict | None, b: dict | None) -> bool:
    """Two stages' outputs hold the same bytes (a directory published again with the same files is the same)."""
    if a is None or b is None or set(a) != set(b):
        return False
    return all(a[k].get("sha256") == b[k].get("sha256") for k in a)


@dataclass(frozen=True)
class RoundDir:
    uri: str
    index: int

    @property
    def samples(self) -> str:
        return store.join(self.uri, "samples.parquet")

    @property
    def skipped(self) -> str:
        return store.join(self.uri, "skipped.json")

    @property
    def build_skipped(self) -> str:
        return store.join(self.uri, "build-skipped.json")

    @property
    def train_data(self) -> str:
        return store.join(self.uri, "train.parquet")

    @property
    def checkpoint(self) -> str:
        return store.join(self.uri, "checkpoint")

    @property
    def eval_dir(self) -> str:
        return store.join(self.uri, "eval")

    @property
    def eval_json(self) -> str:
        return store.join(self.uri, "eval.json")

    @property
    def manifest_uri(self) -> str:
        return store.join(self.uri, "manifest.json")

    def manifest(self) -> Manifest | None:
        return Manifest.load(self.manifest_uri, self.index)

    def open_manifest(self, config_digest: str, force: bool = False) -> Manifest:
        return Manifest.open(self.manifest_uri, config_digest, self.index, force)

    def done(self, stage: str, config_digest: str | None = None) -> bool:
        """`stage` of this round finished (under `config_digest`, when given)."""
        manifest = self.manifest()
        return manifest is not None and manifest.done(stage, config_digest)

    def outputs_of(self, stage: str, written: dict[str, dict]) -> dict[str, dict]:
        """`stage`'s outputs among what a block wrote (store.recording), by path relative to this round."""
        base = store.key_of(self.uri) + "/"
        names = STAGE_OUTPUTS[stage]
        out = {}
        for key, record in written.items():
            rel = key[len(base):] if key.startswith(base) else None
            if rel and any(rel == n or (n.endswith("/") and rel.startswith(n)) for n in names):
                out[rel] = record
        return dict(sorted(out.items()))

    def damage(self, stage: str, manifest: Manifest | None = None, checksums: bool = True) -> str | None:
        """What is wrong with the outputs `stage` recorded (the first file that is missing or differs), or None
        when they are all as recorded. `checksums`: read files to compare them too (sizes are always compared)."""
        manifest = manifest or self.manifest()
        outputs = manifest.outputs(stage) if manifest else None
        if outputs is None:  # recorded before r3v kept outputs: only what it checked then
            if stage == "train" and manifest and manifest.done("train") and not self.checkpoint_ready():
                return f"{self.checkpoint} is missing or incomplete"
            return None
        for rel, record in outputs.items():
            uri = store.join(self.uri, rel)
            try:
                if "published" in record:
                    _check_dir(uri, record, checksums)
                else:
                    store.check_file(uri, record, checksums)
            except store.StorageError as exc:
                return str(exc)
        return None

    def damaged(self, stage: str, problem: str) -> DamagedRunError:
        """The error for a damaged output of `stage`: the file, what was recorded, and what to do."""
        return DamagedRunError(
            f"{problem}. It is an output of round {self.index}'s {stage} stage, which {self.manifest_uri} records as "
            f"done, so the round cannot be trusted as it is. Restore it, or redo that stage and what was made "
            f"from it: {redo_hint(self.index)}"
        )

    def verify(self, stage: str, manifest: Manifest | None = None, checksums: bool = True) -> None:
        """Raise DamagedRunError unless `stage`'s outputs are as recorded."""
        problem = self.damage(stage, manifest, checksums)
        if problem:
            raise self.damaged(stage, problem)

    def first_damage(self, manifest: Manifest) -> tuple[str, str] | None:
        """(stage, problem) of the first done stage whose outputs are not as recorded, else None."""
        for stage in STAGES:
            if manifest.done(stage) and (problem := self.damage(stage, manifest)):
                return stage, problem
        return None

    def read_samples(self) -> pa.Table:
        """samples.parquet, checked against the sample stage's record while it is read (no second read)."""
        manifest = self.manifest()
        record = ((manifest.outputs("sample") if manifest else None) or {}).get("samples.parquet")
        try:
            return store.read_parquet(self.samples, expect=record)
        except (store.StorageError, OSError, pa.ArrowException) as exc:
            raise self.damaged("sample", str(exc) if isinstance(exc, store.StorageError)
                               else f"{self.samples} cannot be read ({type(exc).__name__}: {exc})") from None

    def checkpoint_ready(self) -> bool:
        """The round's checkpoint is there whole: published (store.publish_dir's marker, every file present), or,
        on a local disk, a model directory (a rename made it appear whole)."""
        if store.published(self.checkpoint) is not None:
            try:
                store.check_published(self.checkpoint)
                return True
            except store.StorageError:
                return False
        return store.is_local(self.uri) and any(store.exists(store.join(self.checkpoint, f)) for f in MODEL_FILES)

    def adopt(self, src: "RoundDir", config_digest: str, note: str) -> None:
        """Make this round a copy of `src` recorded under `config_digest` (r3v_ray/experiments/reproduce.py: STaR adopts R3V's round 0,
        the same warm-up). The manifest is rewritten last: until then the copy carries src's config digest, which
        this config refuses, so a crash mid-copy is redone rather than trusted."""
        manifest = src.manifest()
        if manifest is None:
            raise FileNotFoundError(f"{src.manifest_uri}: the round to adopt has no manifest")
        if damage := src.first_damage(manifest):  # what is adopted is trusted: as its stages recorded it
            raise src.damaged(*damage)
        store.delete_dir(self.uri)
        store.copy_tree(src.uri, self.uri)
        adopted = Manifest(self.manifest_uri, config_digest, self.index,
                           {name: {**rec, "adopted_from": note} for name, rec in manifest.stages.items()})
        adopted.save()


@dataclass(frozen=True)
class RunDir:
    uri: str

    @classmethod
    def of(cls, cfg) -> "RunDir":
        return cls(cfg.run_dir)

    @property
    def config(self) -> str:
        return store.join(self.uri, "config.yaml")

    @property
    def report(self) -> str:
        return store.join(self.uri, "report.md")

    @property
    def plot(self) -> str:
        return store.join(self.uri, "accuracy.png")

    @property
    def loss_plot(self) -> str:
        return store.join(self.uri, "loss.png")

    @property
    def samples_plot(self) -> str:
        return store.join(self.uri, "samples.png")

    @property
    def tensorboard(self) -> str:
        """The directory to give `tensorboard --logdir` (the run directory itself works too)."""
        return store.join(self.uri, "tensorboard")

    @property
    def tensorboard_rounds(self) -> str:
        return store.join(self.tensorboard, "rounds")

    def tensorboard_train(self, k: int) -> str:
        return store.join(self.tensorboard, f"train-round-{k:03d}")

    def round(self, k: int) -> RoundDir:
        """Round k's directory; an OutsideRunError when it (or an entry in it) is a link out of the run: nothing
        is read from or written through it, so a run cannot serve, report or overwrite another run's round."""
        uri = store.join(self.uri, f"round-{k:03d}")
        if not store.is_uri(self.uri):  # object stores have no links
            check_inside(self.uri, uri)
        return RoundDir(uri, k)

    def rounds(self) -> list[int]:
        """Indices of the round directories present, ascending."""
        fs, path = store.resolve(self.uri)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        found = [int(m.group(1)) for i in infos if i.type == pafs.FileType.Directory
                 and (m := _ROUND.match(i.base_name))]
        return sorted(found)

    def any_stage_done(self) -> bool:
        """Some stage of some round finished (under any config): the run has outputs a config change would
        invalidate."""
        return any((m := self.round(k).manifest()) is not None and m.any_done() for k in self.rounds())

    def invalidate_after(self, k: int, reason: str) -> None:
        """Mark every done stage of the rounds after `k` stale: they were made from round k's outputs as they were
        before `reason`."""
        for j in self.rounds():
            manifest = self.round(j).manifest() if j > k else None
            if manifest is not None and manifest.any_done():
                log.warning("round %d's finished stages are stale (%s): they are redone when the run gets there",
                            j, reason)
                manifest.invalidate(list(manifest.stages), reason)


def check_inside(run_uri: str, round_uri: str) -> None:
    """The local round directory and each entry in it resolve inside the run directory (links are followed)."""
    run = os.path.realpath(run_uri)
    paths = [round_uri]
    if os.path.isdir(round_uri) and not os.path.islink(round_uri):
        with os.scandir(round_uri) as entries:
            paths += [e.path for e in entries if e.is_symlink()]
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([run, real]) != run:
            raise OutsideRunError(
                f"{path} resolves to {real}, outside the run directory {run_uri}: refused (a round is never read "
                "or written through a link out of its run). Replace the link with the round's own files, or point "
                "the run at the other directory itself")


def _check_dir(uri: str, record: dict, checksums: bool) -> None:
    """A published directory as recorded: the same content (its marker's files) and every file as its marker says;
    checksums only on a local disk (a remote directory is checked file by file wherever a node copies it)."""
    marker = store.published(uri)
    if marker is None:
        state = "has no " + store.PUBLISHED if store.exists(uri) else "is missing"
        raise store.StorageError(f"{uri} {state}")
    if store.content_digest(marker) != record["sha256"]:
        raise store.StorageError(f"{uri} was replaced: its {store.PUBLISHED} lists other files than were recorded")
    store.check_published(uri, marker, checksums=checksums and store.is_local(uri))


def round_of_checkpoint(checkpoint_uri: str) -> tuple[RunDir, int] | None:
    """(run directory, round) for a `<run>/round-<k>/checkpoint` path, else None."""
    parent, _, name = checkpoint_uri.rstrip("/").rpartition("/")
    run, _, round_name = parent.rpartition("/")
    m = _ROUND.match(round_name)
    if name != "checkpoint" or not m or not run:
        return None
    return RunDir(run), int(m.group(1))
