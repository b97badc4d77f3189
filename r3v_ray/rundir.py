"""The run directory's layout, in one place (docs/design.md section 3):

    <storage.root>/<name>/config.yaml, report.md, accuracy.png, loss.png, samples.png
    <storage.root>/<name>/tensorboard/{rounds/, train-round-<kkk>/}   (r3v_ray/tensorboard_log.py)
    <storage.root>/<name>/round-<kkk>/{samples.parquet, skipped.json, build-skipped.json, train.parquet,
                                      checkpoint/, checkpoint.ray/, eval/, eval.json, manifest.json}

`RunDir` and `RoundDir` name every path and answer "which stage is done" from the round manifests
(r3v_ray/manifest.py); the directory publish itself is r3v_ray/store.py's `publish_dir`. The root may be a local
path or a pyarrow filesystem URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from r3v_ray import store
from r3v_ray.manifest import Manifest

STAGES = ("sample", "build", "train", "eval")
MODEL_FILES = ("config.json", "adapter_config.json")  # a full model or an exported LoRA adapter
_ROUND = re.compile(r"round-(\d+)$")


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
        """Make this round a copy of `src` recorded under `config_digest` (reproduce.py: STaR adopts R3V's round 0,
        the same warm-up). The manifest is rewritten last: until then the copy carries src's config digest, which
        this config refuses, so a crash mid-copy is redone rather than trusted."""
        manifest = src.manifest()
        if manifest is None:
            raise FileNotFoundError(f"{src.manifest_uri}: the round to adopt has no manifest")
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
        return RoundDir(store.join(self.uri, f"round-{k:03d}"), k)

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


def round_of_checkpoint(checkpoint_uri: str) -> tuple[RunDir, int] | None:
    """(run directory, round) for a `<run>/round-<k>/checkpoint` path, else None."""
    parent, _, name = checkpoint_uri.rstrip("/").rpartition("/")
    run, _, round_name = parent.rpartition("/")
    m = _ROUND.match(round_name)
    if name != "checkpoint" or not m or not run:
        return None
    return RunDir(run), int(m.group(1))
