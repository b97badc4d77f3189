"""Custom Ray metrics for the dashboard and the Prometheus export (ray.util.metrics).

Each round's driver exits when the round ends, and metrics recorded in an exiting process disappear from the
export. So the metrics live in one small detached actor per cluster ("r3v-metrics" in namespace "r3v", no CPUs),
which every driver finds by name and reports to. Every series is tagged with run and round.
"""

from __future__ import annotations

import logging

import ray

log = logging.getLogger(__name__)

ACTOR_NAME = "r3v-metrics"
NAMESPACE = "r3v"


@ray.remote(num_cpus=0)
class RunMetrics:
    """Holds r3v's metric objects; the dashboard shows it as `r3v-metrics`."""

    def __init__(self):
        from ray.util.metrics import Counter, Gauge

        tags = ("run", "round")
        self.samples = Counter("r3v_samples_generated", "Rationales sampled for training", tag_keys=tags)
        self.positive_share = Gauge("r3v_positive_share", "Share of sampled rationales that are correct", tag_keys=tags)
        self.loss = Gauge("r3v_train_loss", "Final training loss per term (sft, refine, select, total)",
                          tag_keys=tags + ("term",))
        self.accuracy = Gauge("r3v_accuracy", "Evaluation accuracy (%) per metric", tag_keys=tags + ("metric",))

    def record_sampling(self, run: str, round_index: int, num_samples: int, num_correct: int) -> None:
        tags = {"run": run, "round": str(round_index)}
        if num_samples:
            self.samples.inc(num_samples, tags=tags)
            self.positive_share.set(num_correct / num_samples, tags=tags)

    def record_losses(self, run: str, round_index: int, losses: dict[str, float]) -> None:
        for term, value in losses.items():
            self.loss.set(float(value), tags={"run": run, "round": str(round_index), "term": term})

    def record_accuracy(self, run: str, round_index: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.accuracy.set(float(value), tags={"run": run, "round": str(round_index), "metric": name})

    def ping(self) -> bool:
        return True


def metrics_actor():
    """The cluster's metrics actor, created on first use; None (and a log line) if it cannot be had."""
    try:
        # Pinned to the head: a detached actor on an autoscaled worker would keep that node from ever going idle.
        return RunMetrics.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            resources={"node:__internal_head__": 0.001},
        ).remote()
    except Exception as exc:  # metrics must never fail a round
        log.warning("custom metrics unavailable: %s", exc)
        return None


def report(method: str, *args) -> None:
    """Fire-and-forget call of one RunMetrics method; failures are logged, never raised."""
    actor = metrics_actor()
    if actor is None:
        return
    try:
        ray.get(getattr(actor, method).remote(*args), timeout=30)
    except Exception as exc:
        log.warning("recording %s failed: %s", method, exc)
