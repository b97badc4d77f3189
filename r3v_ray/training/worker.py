"""What each Ray Train worker runs: DeepSpeed over the step plan, resumable from the last reported checkpoint.

The loss of a step is the token mean over the whole global batch (all micro-batches, all workers): token counts
per term are summed across workers before the first backward pass, and each micro-batch's loss is scaled so
that DeepSpeed's 1/grad_accum and its average over workers cancel out. Splitting a batch differently therefore
never changes the update.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from r3v_ray.cache import LocalImages, localize
from r3v_ray.config import RunConfig
from r3v_ray.models import load_processor
from r3v_ray.training.collator import ReflectionCollator, model_inputs
from r3v_ray.training.ds_config import deepspeed_config
from r3v_ray.training.examples import TERMS, read_examples
from r3v_ray.training.loss import combine, term_nll_sums, term_token_counts, term_weights
from r3v_ray.training.model_setup import build_trainable_model, export_hf, trainable_parameters
from r3v_ray.training.plan import global_batches, lr_factor, make_plan, worker_micro_batches

log = logging.getLogger("r3v_ray.training")

STATE_FILE = "state.json"
DS_DIR = "ds"
HF_DIR = "hf"
DS_TAG = "state"


def _setup_env(cfg: RunConfig) -> None:
    if cfg.resources.gpus_per_train_worker <= 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must precede the first deepspeed import
    torch.set_num_threads(cfg.resources.torch_threads)


def fingerprint(examples: list[dict], base_model_path: str, cfg: RunConfig, round_index: int,
                base_model_id: str | None = None) -> str:
    """Identifies what a checkpoint was trained on: a checkpoint of other data or settings is never resumed.
    `base_model_id` is the base directory's publish id (r3v_ray/store.py), where it has one."""
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


def run_step(engine, batches: list[dict], weights, world_size: int, device) -> dict[str, Any]:
    """One optimizer step over this worker's micro-batches; returns the global per-term token means."""
    counts = sum(term_token_counts(b["labels"], b["task_ids"]) for b in batches)
    counts = _all_reduce_sum(counts, device)
    scale = world_size * len(batches)
    sums = torch.zeros(len(TERMS))
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = engine(**model_inputs(batch)).logits
        micro_sums = term_nll_sums(logits, batch["labels"], batch["task_ids"])
        engine.backward(combine(micro_sums, counts, weights) * scale)
        engine.step()
        sums += micro_sums.detach().float().cpu()
    sums = _all_reduce_sum(sums, device)
    means = sums / counts.clamp(min=1.0)
    record: dict[str, Any] = {"loss": float((weights * means).sum())}
    for i, term in enumerate(TERMS):
        record[f"loss_{term}"] = float(means[i])
        record[f"tokens_{term}"] = int(counts[i])
    return record


class _LossGauges:
    """Per-term losses as Ray metrics (dashboard / Prometheus), set by the rank-0 worker every step."""

    def __init__(self, tags: dict[str, str]):
        from ray.util.metrics import Gauge

        self.tags = tags
        # Per step, while training runs; the round's final losses are r3v_train_loss (r3v_ray.telemetry).
        self.gauge = Gauge("r3v_train_step_loss", description="R3V training loss per term, every step",
                           tag_keys=("term",) + tuple(tags))

    def set(self, record: dict) -> None:
        for term in ("loss", "loss_sft", "loss_refine", "loss_select"):
            self.gauge.set(record[term], tags={"term": term, **self.tags})


def train_loop_per_worker(loop_cfg: dict) -> None:
    cfg = RunConfig.model_validate(loop_cfg["cfg"])
    _setup_env(cfg)
    import deepspeed  # after _setup_env: DS_ACCELERATOR is read at import
    import ray.train
    from torch.optim.lr_scheduler import LambdaLR

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
    steps = global_batches(len(examples), plan, tcfg.seed)

    model = build_trainable_model(base, tcfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable_parameters(model),
        config=deepspeed_config(tcfg, plan),
        lr_scheduler=lambda opt: LambdaLR(opt, partial(lr_factor, warmup_steps=plan.warmup_steps)),
        dist_init_required=False,
    )
    device = engine.device
    weights = term_weights(tcfg.alpha, tcfg.beta)
    exclude_frozen = tcfg.finetune == "lora"  # a LoRA checkpoint holds the adapters, not the frozen base

    start, history, resumed_from = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
            if state.get("fingerprint") == digest:
                engine.load_checkpoint(str(Path(ckpt_dir) / DS_DIR), tag=DS_TAG, load_module_strict=not exclude_frozen)
                start, history, resumed_from = state["step"], state["history"], state["step"]
                log.info("resumed from the checkpoint of step %d", start)
            else:
                log.warning("ignoring a checkpoint of other data or settings (fingerprint %s)", state.get("fingerprint"))
    gauges = _LossGauges({"run": cfg.name, "round": str(round_index)}) if rank == 0 else None
    setup_seconds = time.perf_counter() - started

    def report(step: int, final: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(
                str(Path(tmp) / DS_DIR), tag=DS_TAG, client_state={"step": step}, exclude_frozen_parameters=exclude_frozen
            )
            summary = {"step": step, "steps": plan.steps, "final": final}
            if history:
                summary.update({k: v for k, v in history[-1].items() if k.startswith("loss")})
            if rank == 0:
                state = {
                    "fingerprint": digest,
                    "step": step,
                    "final": final,
                    "history": history,
                    "plan": plan.to_dict(),
                    "examples": len(examples),
                    "skipped_too_long": skipped,
                    "resumed_from_step": resumed_from,
                    "setup_seconds": setup_seconds,
                    "train_seconds": sum(h["seconds"] for h in history),
                }
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            if final:
                _export(engine, processor, Path(tmp) / HF_DIR, base, tcfg, rank)
            # Unique per train() call and the same on every worker, so the workers' shards merge into one
            # checkpoint and a re-run never writes into an older run's checkpoint directory.
            name = f"{'final' if final else f'step-{step:06d}'}-{loop_cfg['attempt']}"
            ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)

    fail_at, marker = loop_cfg.get("fail_once_at_step"), loop_cfg.get("fault_marker")
    for step in range(start, plan.steps):
        t0 = time.perf_counter()
        if fail_at is not None and step == fail_at and rank == world - 1 and marker and not os.path.exists(marker):
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).write_text("injected\n")  # once only: the restarted worker group goes on
            raise RuntimeError(f"injected worker failure at step {step} (fault-tolerance test)")
        mine = worker_micro_batches(steps[step], lengths, plan, rank)
        batches = [collator([examples[i] for i in ids]) for ids in mine]
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler moves on inside the step)
        record = run_step(engine, batches, weights, world, device)
        record.update(step=step + 1, lr=lr, seconds=time.perf_counter() - t0)
        history.append(record)
        if rank == 0:
            gauges.set(record)
            log.info(
                "round %d step %d/%d loss %.4f (sft %.4f, refine %.4f, select %.4f)", round_index, step + 1,
                plan.steps, record["loss"], record["loss_sft"], record["loss_refine"], record["loss_select"],
            )
        every = tcfg.checkpoint_every_steps
        if every and (step + 1) % every == 0 and step + 1 < plan.steps:
            report(step + 1, final=False)
    report(plan.steps, final=True)


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
