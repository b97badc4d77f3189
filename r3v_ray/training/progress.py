"""What the rank-0 training worker shows while it trains: a progress bar, TensorBoard scalars, the per-step loss
metric, and log lines only when asked for (docs/observability.md).

The bar is ray.experimental.tqdm_ray's: the worker prints its state at most once a second and the driver (which
receives worker output with log_to_driver) draws one bar with steps, loss per term, rate and time left. Each step
costs a string format, a clock read and a few queued TensorBoard events; nothing waits on I/O or on another process,
and nothing reads from the GPU beyond the losses the step loop already turned into floats.
"""

from __future__ import annotations

import logging

from r3v_ray.method.reflect import LOSS_KEYS, TERMS

log = logging.getLogger("r3v_ray.training")


class StepWatch:
    """Built on every rank; only rank 0 draws, writes and sends. `start` is the step a resumed training goes on from."""

    def __init__(self, loop_cfg: dict, rank: int, steps: int, start: int):
        self.round, self.steps = loop_cfg["round_index"], steps
        self.log_every = int(loop_cfg.get("log_every") or 0)
        self.active = rank == 0
        self.bar = self.events = self.metrics = None
        if not self.active:
            return
        if loop_cfg.get("progress_bar"):
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(total=steps, desc=f"round {self.round} train", unit="step")
            if start:
                self.bar.update(start)
        if loop_cfg.get("events_uri"):
            from r3v_ray.observe.tensorboard import EventLog

            # From step 0 a training replaces what an earlier one wrote there; resumed after `start` steps, it
            # purges what the failed attempt wrote from step start + 1 (steps count from 1) on.
            self.events = EventLog(loop_cfg["events_uri"], replace=start == 0, purge_step=start + 1 if start else None)
        if loop_cfg.get("metrics_run"):
            from r3v_ray.observe.telemetry import StepLosses

            self.metrics = StepLosses(loop_cfg["metrics_run"], self.round)

    def step(self, record: dict) -> None:
        if not self.active:
            return
        step = record["step"]
        if self.bar is not None:
            self.bar.set_description(f"round {self.round} loss {record['loss']:.3f} ({_terms(record, 3)})")
            self.bar.update(1)
        if self.events is not None:
            self.events.add(step, {f"train/{k}": record[k] for k in (*LOSS_KEYS, "lr")} | {"train/step_seconds": record["seconds"]})
        if self.metrics is not None:
            self.metrics.step(record)
        if self.log_every and (step % self.log_every == 0 or step == self.steps):
            log.info("round %d step %d/%d loss %.4f (%s) lr %.3g", self.round, step, self.steps, record["loss"],
                     _terms(record, 4), record["lr"])

    def checkpoint(self) -> None:
        """At a checkpoint report: TensorBoard files under a URI uploaded (a local root is written as it goes)."""
        if self.events is not None:
            _never_fail(self.events.sync, "uploading the TensorBoard files")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.events is not None:
            _never_fail(self.events.close, "writing the TensorBoard files")
        if self.metrics is not None:
            self.metrics.close()


def _never_fail(fn, what: str) -> None:
    """Monitoring never fails a training: an error is a warning."""
    try:
        fn()
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)


def _terms(record: dict, digits: int) -> str:
    """Each term's loss of a step, "-" for a term whose batch held none of its examples (not a misleading 0)."""
    return ", ".join(f"{term} " + (f"{record[f'loss_{term}']:.{digits}f}" if record.get(f"tokens_{term}", 1) else "-")
                     for term in TERMS)
