"""One self-training round as stages (docs/method.md, docs/run-directory.md), each resumable through the round manifest.

Round 0:  build (warm-up data) -> train (M0) -> eval (+ the base model's zero-shot CoT accuracy)
Round k:  sample (M(k-1) on the train split) -> build (reflection data from the pool of rounds 1..k)
          -> train (from the base model, or from M(k-1)) -> eval

Stages hand over through files in the run directory only, so any stage can be re-run on its own. A finished stage
is skipped only once what it wrote is found as its manifest recorded it (sizes and checksums, r3v_ray/run/layout.py);
otherwise the run stops naming the file, or with --force redoes the stage, and the later stages and rounds that
were made from its old outputs if the new ones differ. The manifest also records a stage as running (who runs it)
when it starts and as failed (the error) when it raises, for `r3v status` (r3v_ray/observe/status.py); after every round
the report and the TensorBoard rounds log are rebuilt from the manifests.
"""

from __future__ import annotations

import logging
import os
import time

import yaml

from r3v_ray.cluster import preflight

from r3v_ray.run import store

from r3v_ray.observe import telemetry
from r3v_ray.run.cache import localize
from r3v_ray.config import ConfigError, RunConfig, config_from_dict
from r3v_ray.run.manifest import Manifest
from r3v_ray.pipeline.prepare import ensure_data, ensure_model
from r3v_ray.cluster.connect import ensure_ray
from r3v_ray.observe.report import round_summaries, thin_history, write_run_report
from r3v_ray.run.layout import RunDir, same_outputs
from r3v_ray.observe.status import driver_info
from r3v_ray.tasks import get_task
from r3v_ray.tasks.base import printable

log = logging.getLogger("r3v.round")


def read_split(cfg: RunConfig, task, data_dir: str, split: str):
    """The split's records (capped by task.max_train / max_test). Data under a remote URI is read from this node's
    copy, and its image paths are given back as URIs, so that each node resolves them against its own copy."""
    local = localize(data_dir, cfg.storage) if store.is_uri(data_dir) else data_dir
    records = list(task.read(local, split, allow_external_images=cfg.task.allow_external_images,
                             max_image_pixels=cfg.task.max_image_pixels))
    cap = cfg.task.max_train if split == "train" else cfg.task.max_test
    records = records[:cap] if cap else records
    if not store.is_local(data_dir):
        prefix = local.rstrip("/") + "/"
        for r in records:
            if isinstance(r.image, str) and r.image.startswith(prefix):
                r.image = store.join(data_dir, r.image[len(prefix):])
    return records


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _write_config(cfg: RunConfig, force: bool) -> None:
    """runs/<name>/config.yaml records the config the run goes on under; one that would change outputs is
    refused (scheduling changes such as more `rounds` or other resources are not: the digest leaves them out).
    A config under which no stage ever finished pins nothing: it is simply replaced."""
    check_config(cfg, force)
    store.write_text(RunDir.of(cfg).config, cfg.to_yaml())


def check_config(cfg: RunConfig, force: bool) -> None:
    """Refuse a config that differs, in what decides outputs, from the one the run's finished stages were made
    under (the ConfigError names the changed keys)."""
    run = RunDir.of(cfg)
    path = run.config
    if force or not store.exists(path) or not run.any_stage_done():
        return
    old = config_from_dict(yaml.safe_load(store.read_text(path)), path)
    if old.digest() != cfg.digest():
        changed = ", ".join(_changed_keys(old.hashed(), cfg.hashed()))
        raise ConfigError(
            f"{path} holds a different config (changed: {changed}). Re-run with --force to continue under the "
            "new config, or give the run a new `name`."
        )


class RoundRunner:
    def __init__(self, cfg: RunConfig, round_index: int, force: bool = False, job_name: str | None = None):
        if round_index > cfg.rounds:
            raise ValueError(f"round {round_index} is beyond the configured rounds ({cfg.rounds})")
        self.cfg, self.k, self.force = cfg, round_index, force
        self.job_name = job_name or f"r3v {cfg.name} round {round_index}"  # when this round starts the driver
        self.run_dir = RunDir.of(cfg)
        self.dir = self.run_dir.round(round_index)
        self.task = get_task(cfg.task.name, **cfg.task.params)
        self.tag = f"[run {cfg.name} round {round_index}]"

    # -- helpers -------------------------------------------------------------------------------------
    def _stage(self, manifest: Manifest, name: str, fn, redo: bool = False) -> bool:
        """Run stage `name`, unless it is done and its outputs are as recorded (`redo`: an earlier stage of this
        round was just redone differently). Returns whether it ran into outputs other than those recorded before:
        the stages after it, and the later rounds, were then made from something else."""
        recorded = manifest.outputs(name)
        if manifest.done(name):
            if redo:
                log.info("%s stage %s: redone, an earlier stage of the round changed", self.tag, name)
            elif (problem := self.dir.damage(name, manifest)) is None:
                log.info("%s stage %s: already done, skipped", self.tag, name)
                return False
            elif not self.force:
                raise self.dir.damaged(name, problem)
            else:
                log.warning("%s --force: %s; the stage is redone", self.tag, problem)
        log.info("%s stage %s: starting", self.tag, name)
        driver = driver_info()
        manifest.start(name, **driver)
        start = time.time()
        try:
            with store.recording() as written:  # sizes and checksums of what the stage writes, taken as it writes
                info = fn() or {}
        except BaseException as exc:  # Ctrl-C too: `r3v status` shows what stopped the stage
            try:
                manifest.fail(name, f"{type(exc).__name__}: {exc}"[:2000])
            except Exception as record_exc:  # the stage's own error is the one to raise
                log.warning("%s stage %s: could not record the failure: %s", self.tag, name, record_exc)
            raise
        seconds = time.time() - start
        outputs = self.dir.outputs_of(name, written)
        manifest.record(name, seconds, outputs=outputs, **driver, **info)  # which job made it stays in the record
        log.info("%s stage %s: done in %.1fs%s", self.tag, name, seconds, _brief(name, info))
        if same_outputs(outputs, recorded):
            log.info("%s stage %s: its outputs are the same bytes as before", self.tag, name)
            return False
        self.run_dir.invalidate_after(self.k, f"round {self.k}'s {name} stage was redone")
        return True

    def _previous_checkpoint(self) -> str:
        prev_dir = self.run_dir.round(self.k - 1)
        prev, manifest = prev_dir.checkpoint, prev_dir.manifest()
        if manifest is None or not manifest.done("train"):
            raise RuntimeError(f"round {self.k} needs round {self.k - 1}'s checkpoint, but {prev} is not finished; "
                               f"run round {self.k - 1} first")
        prev_dir.verify("train", manifest)  # a DamagedRunError names the file and what to do
        if manifest.config_digest != self.cfg.digest():
            # Building on a model (and samples) made under other settings would mix two experiments.
            message = (f"round {self.k - 1} was made under config {manifest.config_digest}, not this config "
                       f"({self.cfg.digest()}); redo the earlier rounds under this config (--from-round "
                       f"{self.k - 1} --force) or give the run a new `name`")
            if not self.force:
                raise RuntimeError(message)
            log.warning("%s --force: %s", self.tag, message)
        return prev

    # -- stages --------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        # Before anything starts: paths that mean something here, storage that can be written (else the URI and
        # the filesystem's error), then Ray, and every other node sees what this driver wrote.
        preflight.check_job_paths(cfg)
        log.info("%s run directory: %s", self.tag, _shown(cfg.run_dir))
        preflight.check_storage(cfg)
        store.makedirs(self.dir.uri)
        _write_config(cfg, self.force)  # a changed config or an unreadable manifest is refused before Ray starts
        manifest = self.dir.open_manifest(cfg.digest(), self.force)
        ensure_ray(job_config=job_config(self.job_name))  # honours RAY_ADDRESS, else a fresh local Ray
        self.base_model = ensure_model(cfg)
        self.data_dir = ensure_data(cfg)
        preflight.check_nodes(cfg, self.run_dir.config, self.base_model, self.data_dir)
        self.train_records = read_split(cfg, self.task, self.data_dir, "train")
        self.test_records = read_split(cfg, self.task, self.data_dir, "test")
        log.info("%s %d train / %d test questions, model %s", self.tag, len(self.train_records),
                 len(self.test_records), self.base_model)

        stages = [("sample", self.sample)] if self.k > 0 else []
        stages += [("build", self.build), ("train", self.train), ("eval", self.evaluate)]
        redo = False  # once a stage is redone into other outputs, the later ones were made from the old ones
        for name, fn in stages:
            redo = self._stage(manifest, name, fn, redo) or redo
        metrics = store.read_json(self.dir.eval_json)
        self.write_run_report()
        log.info("%s finished; outputs in %s", self.tag, _shown(self.dir.uri))
        return metrics

    def sample(self) -> dict:
        from r3v_ray.pipeline.sampling import params_from_config, records_to_rows, sample

        params = params_from_config(self.cfg.sampling, seed=self.cfg.seed)
        rows = records_to_rows(self.train_records, self.task)
        stats = sample(self.cfg, self._previous_checkpoint(), rows, self.dir.samples, params, self.k)
        if stats.skipped:
            store.write_json(self.dir.skipped, stats.skipped)
        telemetry.report("record_sampling", self.cfg.name, self.k, stats.num_samples, stats.num_correct)
        return {"stats": stats.to_dict() | {"skipped": len(stats.skipped)}}

    def build(self) -> dict:
        from r3v_ray.method.reflect import build_training_data, build_warmup_data
        from r3v_ray.run.cache import LocalImages
        from r3v_ray.training.examples import drop_unreadable_images, write_examples

        if self.k == 0:
            examples = build_warmup_data(self.train_records, self.task, self.cfg.reflect)
            stats = {"examples": {"warmup": len(examples)}}
        else:
            pool = []
            for j in range(1, self.k + 1):  # samples of all earlier rounds stay in the pool, checked as they are read
                pool += self.run_dir.round(j).read_samples().to_pylist()
            records = {r.id: r for r in self.train_records}
            examples, stats = build_training_data(pool, records, self.task, self.cfg.reflect, self.k)
        # Skipped and counted here, not failing training.
        examples, unusable = drop_unreadable_images(examples, LocalImages(self.cfg.task.data_dir, self.cfg.storage))
        if unusable:
            stats["skipped_unreadable_image"] = len(unusable)
            for item in unusable[:10]:
                log.warning("%s build: skipped question %s: %s: %s", self.tag, printable(item["question_id"]),
                            item["field"], printable(item["reason"]))
            store.write_json(self.dir.build_skipped, unusable)
        if not examples:
            raise RuntimeError(f"{self.tag} no training examples were built (stats: {stats})")
        write_examples(self.dir.train_data, examples)  # validated against the schema here, not in the train workers
        return {"stats": stats}

    def train(self) -> dict:
        from r3v_ray.training import train

        cfg = self.cfg
        init = self.base_model
        if cfg.training.init_from == "previous" and self.k > 0:
            init = self._previous_checkpoint()
        result = train(cfg, self.dir.train_data, init, self.dir.checkpoint, self.k,
                       events_uri=self.run_dir.tensorboard_train(self.k), metrics_run=cfg.name)
        metrics = result.to_dict().get("metrics", {})
        # final_loss (the weighted total), final_loss_sft, final_loss_refine, final_loss_select
        losses = {k.removeprefix("final_"): v for k, v in metrics.items()
                  if k.startswith("final_loss") and isinstance(v, (int, float))}
        if losses:
            telemetry.report("record_losses", cfg.name, self.k, losses)
        return {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
                "init_from": init, "history": thin_history(metrics.get("history") or [])}

    def evaluate(self) -> dict:
        from r3v_ray.pipeline.evaluate import evaluate

        eval_uri = self.dir.eval_dir
        sampling: dict = {}  # the pass's wall and generating seconds, for the manifest (benchmarks/round.py)
        metrics = evaluate(self.cfg, self.dir.checkpoint, self.test_records, self.task, eval_uri, self.k,
                           timings=sampling)
        if self.k == 0 and self.cfg.evaluation.zero_shot:
            zs = evaluate(self.cfg, self.base_model, self.test_records, self.task, store.join(eval_uri, "zero-shot"),
                          self.k, greedy_only=True)
            metrics["zero-shot"] = zs["test@1"]
        metrics["method"] = self.cfg.method
        # eval.json holds results only: where the model was read from depends on where the run directory lives, so
        # it is recorded in the manifest with the stage (two runs of one config leave the same eval.json bytes).
        model = metrics.pop("model")
        store.write_json(self.dir.eval_json, metrics)
        telemetry.report("record_accuracy", self.cfg.name, self.k,
                         {k: v for k, v in metrics.items() if "@" in k or k == "zero-shot"})
        return {"metrics": {k: v for k, v in metrics.items() if "@" in k or k == "zero-shot"}, "model": model,
                "sampling": sampling}

    def write_run_report(self) -> None:
        """report.md with its plots and the TensorBoard rounds log, from the run's manifests and eval.json files."""
        from r3v_ray.observe.tensorboard import write_rounds_log

        cfg, run = self.cfg, self.run_dir
        summaries = round_summaries(run.uri, cfg.rounds)
        intro = [f"Method {cfg.method}, rounds 0..{cfg.rounds}, config digest {cfg.digest()}. Where the run stands: "
                 f"`r3v status {_shown(run.uri)}`; TensorBoard: `tensorboard --logdir {_shown(run.uri)}`."]
        write_run_report(run.uri, f"r3v-ray run `{cfg.name}`", f"{cfg.name} ({cfg.method})", cfg.rounds, intro,
                         summaries)
        if cfg.monitoring.tensorboard:
            write_rounds_log(run.tensorboard_rounds, summaries)
        log.debug("%s report: %s", self.tag, _shown(run.report))


def _shown(uri: str) -> str:
    """A location as the user finds it again: URIs as they are, local paths absolute."""
    return uri if store.is_uri(uri) else os.path.abspath(uri)


def job_config(name: str):
    """A driver's Ray job config naming it in the dashboard's Jobs view (its Name column shows metadata
    "job_name"; a submitted job's own metadata takes precedence)."""
    from ray.job_config import JobConfig

    return JobConfig(metadata={"job_name": name})


def _brief(stage: str, info: dict) -> str:
    """A finished stage's numbers on its one line (everything else is in the manifest)."""
    stats, metrics = info.get("stats") or {}, info.get("metrics") or {}
    if stage == "sample" and stats.get("num_samples") is not None:
        n, right = stats["num_samples"], stats.get("num_correct", 0)
        share = f" ({100 * right / n:.1f} %)" if n else ""
        return f": {n} rationales for {stats.get('num_rows')} questions, {right} correct{share}, " \
               f"{stats.get('skipped', 0)} skipped"
    if stage == "build" and stats.get("examples"):
        return ": " + ", ".join(f"{n} {task}" for task, n in stats["examples"].items() if n) + " examples"
    if stage == "train" and metrics.get("steps") is not None:
        from r3v_ray.method.reflect import TERMS

        total = metrics.get("last_epoch_loss")
        if not isinstance(total, (int, float)):
            return f": {metrics['steps']} steps"
        terms = ", ".join(f"{t} " + (f"{v:.4f}" if isinstance(v, (int, float)) else "-")
                          for t, v in ((t, metrics.get(f"last_epoch_loss_{t}")) for t in TERMS))
        return f": {metrics['steps']} steps, loss over the last epoch {total:.4f} ({terms})"
    if stage == "eval" and metrics:
        return ": " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    return ""


def run_round(cfg: RunConfig, round_index: int, force: bool = False, job_name: str | None = None) -> dict:
    return RoundRunner(cfg, round_index, force, job_name).run()
