"""The step plan: batch geometry, which examples each optimizer step sees, and the learning-rate schedule.

Pure and seeded, so every worker derives the same plan on its own and a plain single-process loop can replay
exactly the global batches a distributed run trained on.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from r3v_ray.config import TrainingConfig


@dataclass(frozen=True)
class StepPlan:
    world_size: int
    micro_batch: int  # examples per forward pass on one worker
    grad_accum: int  # micro-batches per worker per optimizer step
    global_batch: int  # = micro_batch * grad_accum * world_size, the effective batch
    steps: int  # optimizer steps
    warmup_steps: int

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(num_examples: int, cfg: TrainingConfig, world_size: int) -> StepPlan:
    """Accumulate gradients up to cfg.global_batch_size; micro-batches shrink when the global batch is smaller
    than one micro-batch per worker. Steps cover cfg.epochs passes over the data (at least one step)."""
    if num_examples < 1:
        raise ValueError("no training examples")
    micro = max(1, min(cfg.micro_batch_size, cfg.global_batch_size // world_size))
    accum = max(1, round(cfg.global_batch_size / (micro * world_size)))
    global_batch = micro * accum * world_size
    steps = max(1, math.ceil(cfg.epochs * num_examples / global_batch))
    warmup = min(steps, math.ceil(cfg.warmup_ratio * steps))
    return StepPlan(world_size, micro, accum, global_batch, steps, warmup)


def global_batches(num_examples: int, plan: StepPlan, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: a stream of seeded per-epoch permutations cut into full batches
    (the last batch wraps into the next permutation, so every step has the same size)."""
    stream: list[int] = []
    epoch = 0
    need = plan.steps * plan.global_batch
    while len(stream) < need:
        order = list(range(num_examples))
        random.Random(f"r3v-train|{seed}|{epoch}").shuffle(order)
        stream += order
        epoch += 1
    return [stream[i * plan.global_batch : (i + 1) * plan.global_batch] for i in range(plan.steps)]


def worker_micro_batches(batch: list[int], lengths: list[int], plan: StepPlan, rank: int) -> list[list[int]]:
    """The micro-batches of one worker for one step. Examples are grouped by length first (less padding);
    the loss is normalised over the whole global batch, so the grouping does not change the update."""
    ordered = sorted(batch, key=lambda i: (lengths[i], i))
    chunks = [ordered[j : j + plan.micro_batch] for j in range(0, len(ordered), plan.micro_batch)]
    return chunks[rank :: plan.world_size]


def lr_factor(step: int, warmup_steps: int) -> float:
    """Constant with linear warm-up: step 0 already gets 1/warmup of the rate (no wasted zero-rate step)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
