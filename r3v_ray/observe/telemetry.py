"""Custom Ray metrics for the dashboard and the Prometheus export (ray.util.metrics); deploy/grafana-r3v.json charts
them. Prometheus sees each name with Ray's `ray_` prefix (`ray_r3v_accuracy`).

Each round's driver exits when the round ends, and metrics recorded in an exiting process disappear from the
export. So the metrics live in one small detached actor per cluster ("r3v-metrics" in namespace "r3v", no CPUs),
which every driver (and the rank-0 training worker, for the per-step losses) finds by name and reports to. Every
series is tagged with run and round.

Ray exports a gauge's value only for two metrics report intervals (2 x 10 s by default) after it was last set
(ray/_private/telemetry/open_telemetry_metric_recorder.py): a value set once vanishes from the export about 20 s
later. The actor therefore keeps the last value of every gauge series and sets it again every REFRESH_S, so each
stays scrapeable for the life of the cluster (counters are cumulative and stay by themselves).
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from r3v_ray.method.reflect import LOSS_KEYS

log = logging.getLogger(__name__)

ACTOR_NAME = "r3v-metrics"
NAMESPACE = "r3v"
REFRESH_S = 5.0  # well inside the gauge TTL of two report intervals

# name -> (kind, description, tag keys besides run and round): the one list deploy/grafana-r3v.json charts.
METRICS = {
    "r3v_samples_generated": ("counter", "Rationales sampled for training", ()),
    "r3v_positive_share": ("gauge", "Share of sampled rationales that are correct", ()),
    "r3v_train_loss": ("gauge", "Final training loss per term (sft, refine, select, total)", ("term",)),
    "r3v_train_step_loss": ("gauge", "Training loss per term at the latest step reported", ("term",)),
    "r3v_accuracy": ("gauge", "Evaluation accuracy (%) per metric", ("metric",)),
}
STEP_LOSS_EVERY_S = 2.0  # the rank-0 worker sends its latest step losses at most this often


@ray.remote(num_cpus=0)
class RunMetrics:
    """Holds r3v's metric objects; the dashboard shows it as `r3v-metrics`."""

    def __init__(self, refresh_s: float = REFRESH_S):
        from ray.util.metrics import Counter, Gauge

        self.metrics = {}
        for name, (kind, description, extra) in METRICS.items():
            cls = Counter if kind == "counter" else Gauge
            self.metrics[name] = cls(name, description=description, tag_keys=("run", "round") + extra)
        self._last: dict[tuple, tuple] = {}  # (name, tags) -> (value, tags dict): what the refresher sets again
        self._lock = threading.Lock()
        threading.Thread(target=self._refresh, args=(refresh_s,), name="r3v-metrics-refresh", daemon=True).start()

    def _set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.metrics[name].set(float(value), tags=tags)
        with self._lock:
            self._last[(name, tuple(sorted(tags.items())))] = (float(value), tags)

    def _refresh(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            with self._lock:
                items = [(key[0], value, tags) for key, (value, tags) in self._last.items()]
            for name, value, tags in items:
                try:
                    self.metrics[name].set(value, tags=tags)
                except Exception as exc:  # never let the refresher die
                    log.warning("re-setting %s failed: %s", name, exc)

    def record_sampling(self, run: str, round_index: int, num_samples: int, num_correct: int) -> None:
        tags = {"run": run, "round": str(round_index)}
        if num_samples:
            self.metrics["r3v_samples_generated"].inc(num_samples, tags=tags)
            self._set("r3v_positive_share", num_correct / num_samples, tags)

    def record_losses(self, run: str, round_index: int, losses: dict[str, float]) -> None:
        for term, value in losses.items():
            self._set("r3v_train_loss", value, {"run": run, "round": str(round_index), "term": term})

    def record_step_losses(self, run: str, round_index: int, losses: dict[str, float]) -> None:
        for term, value in losses.items():
            self._set("r3v_train_step_loss", value, {"run": run, "round": str(round_index), "term": term})

    def record_accuracy(self, run: str, round_index: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._set("r3v_accuracy", value, {"run": run, "round": str(round_index), "metric": name})

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
    """One RunMetrics call, waited for (bounded); failures are logged, never raised."""
    actor = metrics_actor()
    if actor is None:
        return
    try:
        ray.get(getattr(actor, method).remote(*args), timeout=30)
    except Exception as exc:
        log.warning("recording %s failed: %s", method, exc)


class StepLosses:
    """The rank-0 worker's per-step losses to r3v_train_step_loss: sent without waiting, at most every
    STEP_LOSS_EVERY_S (a training step never waits on the actor), and the last one at `close`."""

    def __init__(self, run: str, round_index: int):
        self.terms = LOSS_KEYS
        self.run, self.round = run, round_index
        self.actor = metrics_actor()
        self._sent_at = float("-inf")
        self._pending: dict[str, float] | None = None

    def step(self, record: dict) -> None:
        self._pending = {term: record[term] for term in self.terms}
        now = time.monotonic()
        if now - self._sent_at >= STEP_LOSS_EVERY_S:
            self._send()
            self._sent_at = now

    def _send(self, wait: bool = False) -> None:
        if self.actor is None or self._pending is None:
            return
        try:
            ref = self.actor.record_step_losses.remote(self.run, self.round, self._pending)
            if wait:
                ray.get(ref, timeout=10)
        except Exception as exc:
            log.warning("recording step losses failed: %s", exc)
            self.actor = None
        self._pending = None

    def close(self) -> None:
        self._send(wait=True)
