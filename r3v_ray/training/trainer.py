"""The driver side of one training round: a Ray Train TorchTrainer over DeepSpeed workers, then the export of
the final model as a Hugging Face directory at `out_dir` (published whole: r3v_ray/run/store.py publish_dir). out_dir
may be a URI: Ray Train's storage then lives under it too, and every worker fetches a base model given as a URI
into its node's cache (r3v_ray/run/cache.py)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from r3v_ray.observe import console

from r3v_ray.run import store
from r3v_ray.config import RunConfig
from r3v_ray.cluster.resources import scaling_config_kwargs
from r3v_ray.method.reflect import LOSS_KEYS, TERMS
from r3v_ray.training.examples import read_examples
from r3v_ray.training.worker import HF_DIR, STATE_FILE, fingerprint, train_loop_per_worker

log = logging.getLogger("r3v_ray.training")


class TrainingError(RuntimeError):
    """Training did not produce a model; the message says which run and why."""


@dataclass
class TrainResult:
    checkpoint_dir: str  # the exported Hugging Face directory (= out_dir)
    metrics: dict[str, Any] = field(default_factory=dict)
    ray_checkpoint: str | None = None  # where Ray Train keeps the final checkpoint (resumable DeepSpeed state)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _storage(out_dir: str) -> tuple[pafs.FileSystem, str]:
    """Ray Train's storage for this export: `<out_dir>.ray`, next to it, on out_dir's filesystem (local or a URI)."""
    fs, path = store.resolve(out_dir)
    return fs, path.rstrip("/") + ".ray"


def _timeline(state: dict, fit_started: float, fit_ended: float, published: float) -> dict[str, float]:
    """Where a training's wall time outside its steps went (wall clocks of the driver and rank 0; one machine's
    clock locally): the worker group's start up to the loop, the loop's imports and set-up, the final checkpoint
    with the export and Ray Train's wind-down, and the export's publication (benchmarks/round.py). After a restart
    from a checkpoint there is none; after a restart before the first checkpoint, the worker group's start also
    holds the failed attempt (Ray Train tells a worker nothing of earlier attempts)."""
    entered, reported = state.get("entered_at"), state.get("report_started_at")
    if not entered or not reported or state.get("resumed_from_step") is not None:
        return {}  # a resumed training's loop started in another attempt: its timeline is not this one's
    return {"worker_group_seconds": max(0.0, entered - fit_started), "import_seconds": state["import_seconds"],
            "final_report_seconds": max(0.0, fit_ended - reported), "publish_seconds": published - fit_ended}


def last_epoch_losses(history: list[dict], examples: int, global_batch: int) -> dict[str, float | None]:
    """Each loss over the last epoch's steps, weighted by the steps' tokens: the total by all of a step's tokens
    (with one term, it equals that term's), each term by its own, over the steps whose batch held it (None when
    none did). The last step alone can read 0 for a term that trained
    all along, because its batch happened to hold none of that term's examples."""
    last = history[-max(1, math.ceil(examples / max(1, global_batch))):]

    def tokens(h: dict) -> int:
        return sum(h.get(f"tokens_{t}", 0) for t in TERMS)

    total_tokens = sum(tokens(h) for h in last)
    out: dict[str, float | None] = {
        "last_epoch_loss": sum(h["loss"] * tokens(h) for h in last) / total_tokens if total_tokens else None}
    for term in TERMS:
        n = sum(h.get(f"tokens_{term}", 0) for h in last)
        out[f"last_epoch_loss_{term}"] = (sum(h[f"loss_{term}"] * h.get(f"tokens_{term}", 0) for h in last) / n
                                          if n else None)
    return out


def _summary(state: dict, seconds: float) -> dict[str, Any]:
    history = state["history"]
    terms = LOSS_KEYS
    metrics: dict[str, Any] = {
        "steps": state["step"],
        "examples": state["examples"],
        "skipped_too_long": len(state["skipped_too_long"]),
        "skipped_examples": state["skipped_too_long"],
        "plan": state["plan"],
        "resumed_from_step": state["resumed_from_step"],
        "seconds": seconds,
        "setup_seconds": state["setup_seconds"],
        "train_seconds": state["train_seconds"],
        "history": history,
    }
    for term in terms:
        values = [h[term] for h in history]
        metrics[f"final_{term}"] = values[-1] if values else None
        metrics[f"mean_{term}"] = sum(values) / len(values) if values else None
    metrics.update(last_epoch_losses(history, state["examples"], state["plan"]["global_batch"]))
    done = state["plan"]["global_batch"] * len(history)
    metrics["examples_per_second"] = done / state["train_seconds"] if state["train_seconds"] else None
    return metrics


def _refuse_imageless_examples_under_zero3(examples: list[dict], cfg: RunConfig, train_uri: str) -> None:
    """ZeRO-3 with a trained vision tower on several workers waits forever on a step where one rank's micro-batch has
    no image (measured: DeepSpeed 0.19 on CPU); ZeRO 0-2 give the tower a zero gradient instead (worker.run_step)."""
    t = cfg.training
    if t.zero_stage < 3 or t.freeze_vision or cfg.resources.num_train_workers < 2:
        return
    without = [e["question_id"] for e in examples if not e.get("image")]
    if without:
        raise TrainingError(
            f"{train_uri}: {len(without)} examples have no image (first: {without[0]!r}), which training.zero_stage 3 "
            f"cannot train with the vision tower unfrozen (training.freeze_vision: false) on several workers; use "
            f"zero_stage 2 or freeze the vision tower")


def train(
    cfg: RunConfig,
    train_uri: str,
    base_model_path: str,
    out_dir: str,
    round_index: int,
    *,
    events_uri: str | None = None,
    metrics_run: str | None = None,
) -> TrainResult:
    """Fine-tune `base_model_path` on the example rows in `train_uri` with the R3V loss; export to `out_dir`.

    Runs cfg.resources.num_train_workers Ray Train workers, each with a DeepSpeed engine. A worker failure
    restarts the group from the last reported checkpoint (up to cfg.training.max_failures times); a re-run with
    the same out_dir, data and settings resumes too. Per-step losses are in metrics["history"]; while training
    runs, rank 0 draws a progress bar (cfg.monitoring), writes them as TensorBoard scalars into `events_uri` and,
    with `metrics_run` (the run's name), sends them to the Ray metric r3v_train_step_loss.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not store.exists(train_uri):
        raise TrainingError(f"training data {train_uri} does not exist")
    # Workers may run in another directory: local paths travel as absolute ones (a hub name stays as it is).
    if "://" not in train_uri:
        train_uri = os.path.abspath(train_uri)
    if not store.is_uri(base_model_path) and os.path.exists(base_model_path):
        base_model_path = os.path.abspath(base_model_path)  # a URI is fetched by each worker's node (r3v_ray/run/cache.py)
    if events_uri and not store.is_uri(events_uri):
        events_uri = os.path.abspath(events_uri)  # Ray Train starts its workers in a directory of its own
    examples = read_examples(train_uri)
    _refuse_imageless_examples_under_zero3(examples, cfg, train_uri)
    from r3v_ray.cluster.connect import ensure_ray

    # Ray Train propagates RAY_TRAIN_* variables to its workers and reads the state-tracking switch here.
    console.apply_env()
    ensure_ray()  # honours RAY_ADDRESS, else a fresh local Ray
    # Workers, CPUs/GPUs, custom resources and accelerator type from the config (what `r3v plan` prints).
    scaling = scaling_config_kwargs(cfg)
    use_gpu = scaling["use_gpu"]
    # One Ray Train run per (data, settings): a re-run of the same training resumes from its last checkpoint,
    # while other data or settings never pick up a stale one.
    # The base's publish id joins the fingerprint: a re-exported previous round is other weights at the same path.
    base_id = None
    if store.is_uri(base_model_path) or os.path.isdir(base_model_path):  # not a hub name
        base_id = (store.published(base_model_path) or {}).get("id")
    digest = fingerprint(examples, base_model_path, cfg, round_index, base_id)
    storage_fs, storage_path = _storage(out_dir)
    verbose = console.verbose()
    mon = cfg.monitoring
    started, fit_started = time.perf_counter(), time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "train_uri": train_uri,
            "cwd": os.getcwd(),  # relative image paths in the examples are relative to the caller's directory
            "base_model_path": base_model_path,
            "round_index": round_index,
            "fingerprint": digest,
            "base_model_id": base_id,
            "attempt": uuid.uuid4().hex[:8],
            # What rank 0 shows (r3v_ray/training/progress.py): per-step log lines with --verbose or every
            # monitoring.log_every_steps, otherwise the bar alone.
            "verbose": verbose,
            "log_every": 1 if verbose else mon.log_every_steps,
            "progress_bar": mon.progress_bar,
            "events_uri": events_uri if mon.tensorboard else None,
            "metrics_run": metrics_run,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(**scaling),
        run_config=RayRunConfig(
            name=digest,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.training.checkpoints_to_keep),
            # Ray Train's own INFO lines (worker group started, each checkpoint reported) stay in its log files.
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise TrainingError(f"training round {round_index} into {out_dir} failed: {exc}") from exc
    if result.error is not None:
        raise TrainingError(f"training round {round_index} into {out_dir} failed: {result.error}")
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise TrainingError(f"training round {round_index}: no checkpoint was reported")
    fit_ended = time.time()
    src_fs, src = checkpoint.filesystem, checkpoint.path
    state = json.loads(src_fs.open_input_stream(f"{src}/{STATE_FILE}").read().decode())
    if not state.get("final"):
        raise TrainingError(f"training round {round_index}: the last checkpoint {src} is not the final one")
    store.publish_dir(f"{src}/{HF_DIR}", out_dir, src_fs=src_fs)
    metrics = _summary(state, time.perf_counter() - started) | _timeline(state, fit_started, fit_ended, time.time())
    log.info("round %d: trained %d steps, final loss %.4f, exported to %s", round_index, metrics["steps"],
             metrics["final_loss"], out_dir)
    return TrainResult(checkpoint_dir=out_dir, metrics=metrics, ray_checkpoint=src)
