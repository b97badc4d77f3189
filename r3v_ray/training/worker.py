"""What each Ray Train worker runs: DeepSpeed over the step plan, resumable from the last reported checkpoint.

The loop is set-up (data, plan, engine), resume (the last checkpoint of the same training), the steps, and the
reports (a checkpoint every training.checkpoint_every_steps, the final one with the export); rank 0 also shows the
training as it goes (r3v_ray/training/progress.py).

The loss of a step is the token mean over the whole global batch (all micro-batches, all workers): token counts
per term are summed across workers before the first backward pass, and each micro-batch's loss is scaled so
that DeepSpeed's 1/grad_accum and its average over workers cancel out. Splitting a batch differently therefore
never changes the update.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from r3v_ray.run.cache import LocalImages, localize
from r3v_ray.config import RunConfig
from r3v_ray.models import load_processor
from r3v_ray.training.collator import ReflectionCollator, model_inputs
from r3v_ray.training.ds_config import deepspeed_config
from r3v_ray.method.reflect import TERMS
from r3v_ray.training.examples import read_examples
from r3v_ray.training.loss import combine, term_nll_sums, term_token_counts, term_weights
from r3v_ray.training.model_setup import (build_trainable_model, export_hf, trainable_parameters,
                                          trainable_vision_parameters)
from r3v_ray.training.plan import StepPlan, global_batches, lr_factor, make_plan, worker_micro_batches
from r3v_ray.training.progress import StepWatch

log = logging.getLogger("r3v_ray.training")

STATE_FILE = "state.json"
DS_DIR = "ds"
HF_DIR = "hf"
DS_TAG = "state"


def _setup_env(cfg: RunConfig) -> None:
    if cfg.resources.gpus_per_train_worker <= 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must precede the first deepspeed import
    torch.set_num_threads(cfg.resources.torch_threads)
    # DeepSpeed's ZeRO still calls this torch API; torch's notice about it says nothing to a user of r3v.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor` is deprecated", category=FutureWarning)


def fingerprint(examples: list[dict], base_model_path: str, cfg: RunConfig, round_index: int,
                base_model_id: str | None = None) -> str:
    """Identifies what a checkpoint was trained on: a checkpoint of other data or settings is never resumed.
    `base_model_id` is the base directory's publish id (r3v_ray/run/store.py), where it has one."""
    h = hashlib.sha256()
    key = [base_model_path, round_index, cfg.training.model_dump(mode="json")] + ([base_model_id] if base_model_id else [])
    h.update(json.dumps(key, sort_keys=True).encode())
    for e in examples:
        h.update(json.dumps(e, sort_keys=True).encode())
    return h.hexdigest()[:16]


def filter_by_length(examples: list[dict], collator, max_seq_len: int) -> tuple[list[dict], list[int], list[dict]]:
    """(kept, their token lengths, skipped as {question_id, task, tokens}); over-long examples are skipped and
    counted, never truncated (a cut target would teach the model to stop mid-answer)."""
    kept, lengths, skipped = [], [], []
    for e in examples:
        n = collator.length(e)
        if n > max_seq_len:
            skipped.append({"question_id": e["question_id"], "task": e["task"], "tokens": n})
        else:
            kept.append(e)
            lengths.append(n)
    return kept, lengths, skipped


def _absolute_image(example: dict, cwd: str) -> dict:
    image = example.get("image")
    if image and "://" not in image and not os.path.isabs(image):
        return {**example, "image": os.path.join(cwd, image)}
    return example


def _all_reduce_sum(tensor, device):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = tensor.to(device)
        dist.all_reduce(t)
        return t.cpu()
    return tensor


def run_step(engine, batches: list[dict], weights, world_size: int, device, reduction: str = "mixture",
             vision: list | None = None) -> dict[str, Any]:
    """One optimizer step over this worker's micro-batches; returns the loss and the global per-term token means.
    `vision`: the trained vision tower's parameters, given a zero gradient by a micro-batch without an image (DeepSpeed
    reduces the gradients each rank produced: a rank without one for the tower would leave the ranks out of step)."""
    counts = sum(term_token_counts(b["labels"], b["task_ids"]) for b in batches)
    counts = _all_reduce_sum(counts, device)
    scale = world_size * len(batches)
    sums = torch.zeros(len(TERMS))
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = engine(**model_inputs(batch)).logits
        micro_sums = term_nll_sums(logits, batch["labels"], batch["task_ids"])
        loss = combine(micro_sums, counts, weights, reduction) * scale
        if vision and "pixel_values" not in batch:
            loss = loss + 0.0 * sum(p.sum() for p in vision)
        engine.backward(loss)
        engine.step()
        sums += micro_sums.detach().float().cpu()
    sums = _all_reduce_sum(sums, device)
    means = sums / counts.clamp(min=1.0)
    record: dict[str, Any] = {"loss": float(combine(sums, counts, weights, reduction))}
    for i, term in enumerate(TERMS):
        record[f"loss_{term}"] = float(means[i])
        record[f"tokens_{term}"] = int(counts[i])
    return record


@dataclass
class _Setup:
    """What set-up hands to the rest of the loop: the data, the plan and the DeepSpeed engine of this worker."""

    cfg: RunConfig
    loop_cfg: dict
    rank: int
    world: int
    digest: str
    base: str  # the base model's local directory
    processor: Any
    collator: ReflectionCollator
    examples: list[dict]
    lengths: list[int]
    skipped: list[dict]
    plan: StepPlan
    steps: list[list[int]]  # the global batches, as example indices
    engine: Any
    weights: torch.Tensor
    exclude_frozen: bool
    vision: list  # the vision tower's trained parameters (run_step)
    setup_seconds: float = 0.0
    entered_at: float = 0.0  # wall clock when the loop was entered (before its imports): the worker group's start
    import_seconds: float = 0.0  # the config read and deepspeed and Ray Train imported in this process


@dataclass
class _Progress:
    """Where the loop stands: the next step, the history so far and the step a resume started from."""

    start: int = 0
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Set-up, resume, the steps (each reported to the watch), a checkpoint report every
    training.checkpoint_every_steps and the final one with the export."""
    run = _set_up(loop_cfg)
    progress = _resume(run)
    watch = StepWatch(loop_cfg, run.rank, run.plan.steps, progress.start)
    every = run.cfg.training.checkpoint_every_steps
    try:
        for step in range(progress.start, run.plan.steps):
            record = _step(run, step)
            progress.history.append(record)
            watch.step(record)
            if every and (step + 1) % every == 0 and step + 1 < run.plan.steps:
                _report(run, progress, step + 1, final=False)
                watch.checkpoint()
        _report(run, progress, run.plan.steps, final=True)
    finally:
        watch.close()


def _set_up(loop_cfg: dict) -> _Setup:
    """Data (checked against the driver's fingerprint, over-long examples skipped), the step plan and the engine."""
    entered_at, imports_started = time.time(), time.perf_counter()
    cfg = RunConfig.model_validate(loop_cfg["cfg"])
    _setup_env(cfg)
    import deepspeed  # after _setup_env: DS_ACCELERATOR is read at import
    import ray.train
    from torch.optim.lr_scheduler import LambdaLR

    import_seconds = time.perf_counter() - imports_started

    tcfg = cfg.training
    base_uri, round_index = loop_cfg["base_model_path"], loop_cfg["round_index"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    started = time.perf_counter()

    all_examples = read_examples(loop_cfg["train_uri"])
    digest = fingerprint(all_examples, base_uri, cfg, round_index, loop_cfg.get("base_model_id"))
    if digest != loop_cfg["fingerprint"]:
        raise RuntimeError(f"{loop_cfg['train_uri']} changed while training was starting; run again")
    # A base model or images under a URI are read from this node's copy (fetched once per node and content).
    base = localize(base_uri, cfg.storage)
    processor = load_processor(base, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    collator = ReflectionCollator(processor)
    images = LocalImages(cfg.task.data_dir, cfg.storage)
    all_examples = [_absolute_image({**e, "image": images(e.get("image"))}, loop_cfg["cwd"]) for e in all_examples]
    examples, lengths, skipped = filter_by_length(all_examples, collator, tcfg.max_seq_len)
    if not examples:
        raise ValueError(f"{loop_cfg['train_uri']}: no example fits training.max_seq_len={tcfg.max_seq_len}")
    plan = make_plan(len(examples), tcfg, world)

    if not loop_cfg.get("verbose"):
        _quiet_ray_train_reports()
    with _quiet(loop_cfg.get("verbose", False)):  # DeepSpeed prints its op builds and comm set-up
        model = build_trainable_model(base, tcfg)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=trainable_parameters(model),
            config=deepspeed_config(tcfg, plan),
            lr_scheduler=lambda opt: LambdaLR(opt, partial(lr_factor, warmup_steps=plan.warmup_steps)),
            dist_init_required=False,
        )
    return _Setup(
        cfg=cfg, loop_cfg=loop_cfg, rank=rank, world=world, digest=digest, base=base, processor=processor,
        collator=collator, examples=examples, lengths=lengths, skipped=skipped, plan=plan,
        steps=global_batches(len(examples), plan, tcfg.seed), engine=engine,
        weights=term_weights(tcfg.alpha, tcfg.beta),
        exclude_frozen=tcfg.finetune == "lora",  # a LoRA checkpoint holds the adapters, not the frozen base
        # whole parameters only: ZeRO-3 holds a partition of each outside forward, which a zero gradient cannot touch
        vision=trainable_vision_parameters(engine.module, base) if tcfg.zero_stage < 3 else [],
        setup_seconds=time.perf_counter() - started, entered_at=entered_at, import_seconds=import_seconds,
    )


def _resume(run: _Setup) -> _Progress:
    """The last reported checkpoint of this very training (same fingerprint), else a start from step 0."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return _Progress()
    with checkpoint.as_directory() as ckpt_dir:
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        if state.get("fingerprint") != run.digest:
            log.warning("ignoring a checkpoint of other data or settings (fingerprint %s)", state.get("fingerprint"))
            return _Progress()
        run.engine.load_checkpoint(str(Path(ckpt_dir) / DS_DIR), tag=DS_TAG, load_module_strict=not run.exclude_frozen)
    log.info("round %d: resumed from the checkpoint of step %d", run.loop_cfg["round_index"], state["step"])
    return _Progress(start=state["step"], history=state["history"], resumed_from=state["step"])


def _step(run: _Setup, step: int) -> dict[str, Any]:
    """One optimizer step of the plan on this worker's micro-batches; the record the history keeps."""
    t0 = time.perf_counter()
    mine = worker_micro_batches(run.steps[step], run.lengths, run.plan, run.rank)
    batches = [run.collator([run.examples[i] for i in ids]) for ids in mine]
    lr = run.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on inside the step)
    record = run_step(run.engine, batches, run.weights, run.world, run.engine.device,
                      run.cfg.training.loss_reduction, run.vision)
    record.update(step=step + 1, lr=lr, seconds=time.perf_counter() - t0)
    return record


def _report(run: _Setup, progress: _Progress, step: int, final: bool) -> None:
    """A checkpoint to Ray Train: every worker's DeepSpeed shard, rank 0's state (history, plan, skips) and, when
    final, the exported Hugging Face directory."""
    import ray.train

    history = progress.history
    started_at = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run.engine.save_checkpoint(str(Path(tmp) / DS_DIR), tag=DS_TAG, client_state={"step": step},
                                   exclude_frozen_parameters=run.exclude_frozen)
        summary = {"step": step, "steps": run.plan.steps, "final": final}
        if history:
            summary.update({k: v for k, v in history[-1].items() if k.startswith("loss")})
        if run.rank == 0:
            state = {
                "fingerprint": run.digest,
                "step": step,
                "final": final,
                "history": history,
                "plan": run.plan.to_dict(),
                "examples": len(run.examples),
                "skipped_too_long": run.skipped,
                "resumed_from_step": progress.resumed_from,
                "setup_seconds": run.setup_seconds,
                "import_seconds": run.import_seconds,
                "entered_at": run.entered_at,
                "report_started_at": started_at,
                "train_seconds": sum(h["seconds"] for h in history),
            }
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        if final:
            _export(run.engine, run.processor, Path(tmp) / HF_DIR, run.base, run.cfg.training, run.rank)
        # Unique per train() call and the same on every worker, so the workers' shards merge into one
        # checkpoint and a re-run never writes into an older run's checkpoint directory.
        name = f"{'final' if final else f'step-{step:06d}'}-{run.loop_cfg['attempt']}"
        ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report ("Reporting training result N: TrainingReport(...)") at INFO through a logger
    named after its source file, outside the `ray.train` loggers its LoggingConfig governs."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


@contextmanager
def _quiet(verbose: bool):
    """stdout of a noisy library call kept out of the run's output (Ray keeps nothing of it either), unless
    verbose; its warnings, logged through loggers with handlers of their own, still show."""
    if verbose:
        yield
        return
    with redirect_stdout(io.StringIO()) as captured:
        yield
    text = captured.getvalue().strip()
    if text:
        log.debug("%s", text)


def _export(engine, processor, out: Path, base: str, tcfg, rank: int) -> None:
    """Rank 0 writes the Hugging Face directory; under ZeRO-3 every rank first helps gather the weights."""
    if tcfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks call it
        if rank == 0:
            model = build_trainable_model(base, tcfg)
            model.load_state_dict(state)
            export_hf(model, processor, out, base)
    elif rank == 0:
        export_hf(engine.module, processor, out, base)
