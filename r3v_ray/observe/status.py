"""`r3v status RUN_DIR`: where a run stands, read from its files alone (config.yaml and the round manifests), so it
works on any storage.root (s3://, gs://, a local path), from any machine, while the run goes on or after it died.

Each stage of each round is done, running (since when, on which host and process, in which Ray job), failed (with
the error) or not started; a stage recorded as running whose driver process is gone from this machine is shown as
interrupted; a done stage whose outputs are not as its manifest recorded them (sizes always, checksums with
--verify) is shown as damaged, naming the file. From that it says what a re-run would do next, in the order
`r3v run` goes: the first round not finished under the run's config, at its first stage not done.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field

import yaml

from r3v_ray.run import store
from r3v_ray.config import config_from_dict
from r3v_ray.run.manifest import redo_hint
from r3v_ray.run.layout import STAGES, RunDir


class StatusError(RuntimeError):
    """No run at the given place; the message names it."""


def driver_info() -> dict:
    """Who runs a stage: host and process, and the Ray job (submission id and job id) when inside one."""
    info: dict = {"host": socket.gethostname(), "pid": os.getpid()}
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for a job's driver
    if job_config:
        try:
            info["ray_job"] = json.loads(job_config).get("metadata", {}).get("job_submission_id")
        except ValueError:
            pass
    try:
        import ray

        if ray.is_initialized():
            info["ray_job_id"] = ray.get_runtime_context().get_job_id()
    except Exception:
        pass
    return info


def stages_of(round_index: int) -> tuple[str, ...]:
    return STAGES[1:] if round_index == 0 else STAGES  # round 0 samples nothing


@dataclass
class StageStatus:
    name: str
    state: str  # done | damaged | running | interrupted | failed | stale | pending
    seconds: float | None = None  # a done stage's time; a running one's time so far
    # a failed stage's error; a stale one's reason (r3v_ray/run/manifest.py invalidate); a damaged one's first output
    # that is not as recorded (r3v_ray/run/layout.py RoundDir.damage)
    error: str | None = None
    host: str | None = None
    pid: int | None = None
    ray_job: str | None = None


@dataclass
class RoundStatus:
    index: int
    stages: list[StageStatus]
    config_digest: str | None = None  # the manifest's; None when the round never started
    other_config: bool = False  # recorded under another config than config.yaml's

    @property
    def state(self) -> str:
        states = {s.state for s in self.stages}
        if self.config_digest is None:
            return "not started"
        if states == {"done"}:
            return "finished" if not self.other_config else "finished under another config"
        for word in ("damaged", "running", "failed", "interrupted", "stale"):
            if word in states:
                return word
        return "partly done"


@dataclass
class RunStatus:
    uri: str
    name: str
    method: str
    rounds: int
    config_digest: str
    round_status: list[RoundStatus] = field(default_factory=list)
    next: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        for r, rs in zip(data["round_status"], self.round_status):
            r["state"] = rs.state
        return data


def run_status(run_uri: str, verify: bool = False) -> RunStatus:
    """The run's status. Every done stage's outputs are compared with what its manifest recorded, by size, and with
    `verify` by checksum too (reading them): one that differs shows as damaged, naming the file."""
    run = RunDir(run_uri.rstrip("/"))
    if not store.exists(run.config):
        raise StatusError(f"{run.uri}: no run here (no config.yaml; a run writes it when its first round starts)")
    cfg = config_from_dict(yaml.safe_load(store.read_text(run.config)), run.config)
    digest = cfg.digest()
    status = RunStatus(run.uri, cfg.name, cfg.method, cfg.rounds, digest)
    for k in range(max([cfg.rounds] + run.rounds()) + 1):
        status.round_status.append(_round_status(run, k, digest, verify))
    status.next = _next_step(status)
    return status


def _round_status(run: RunDir, k: int, digest: str, verify: bool) -> RoundStatus:
    round_dir = run.round(k)  # a round that is a link out of the run is refused here (OutsideRunError)
    manifest = round_dir.manifest()
    if manifest is None:
        return RoundStatus(k, [StageStatus(s, "pending") for s in stages_of(k)])
    out = RoundStatus(k, [], manifest.config_digest, manifest.config_digest != digest)
    for name in stages_of(k):
        entry = manifest.stages.get(name) or {}
        state = entry.get("status") or "pending"
        stage = StageStatus(name, state, entry.get("seconds"), entry.get("error") or entry.get("stale_because"),
                            entry.get("host"), entry.get("pid"), entry.get("ray_job"))
        # Only outputs the manifest recorded (a round recorded before r3v kept them has none to compare).
        if manifest.outputs(name) and (problem := round_dir.damage(name, manifest, checksums=verify)):
            stage.state, stage.error = "damaged", problem
        if state == "running":
            stage.seconds = time.time() - entry["started_at"] if entry.get("started_at") else None
            if _gone(entry):
                stage.state = "interrupted"
        out.stages.append(stage)
    return out


def _gone(entry: dict) -> bool:
    """A stage's driver on this machine whose process has exited (elsewhere we cannot tell)."""
    if entry.get("host") != socket.gethostname() or not entry.get("pid"):
        return False
    try:
        os.kill(int(entry["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _next_step(status: RunStatus) -> str:
    for rs in status.round_status[: status.rounds + 1]:
        if rs.config_digest is None:
            return f"a re-run starts round {rs.index} ({rs.stages[0].name} first)"
        if rs.other_config:
            return (f"round {rs.index} was made under config {rs.config_digest}, not config.yaml's "
                    f"{status.config_digest}: a re-run refuses it unless --force (which redoes it) or a new `name`")
        for stage in rs.stages:
            if stage.state == "done":
                continue
            where = f"round {rs.index} at stage {stage.name}"
            if stage.state == "running":
                who = f"Ray job {stage.ray_job}" if stage.ray_job else f"pid {stage.pid} on {stage.host}"
                return f"{where} is running ({who}): wait for it, or stop it before running the round again"
            if stage.state == "damaged":
                return (f"a re-run refuses {where}: {stage.error} (restore it, or redo the round: "
                        f"{redo_hint(rs.index)})")
            if stage.state == "failed":
                return f"a re-run retries {where}, which failed: {stage.error}"
            if stage.state == "interrupted":
                return f"a re-run resumes {where} (its driver, pid {stage.pid}, has exited)"
            if stage.state == "stale":
                return f"a re-run redoes {where}, which is stale: {stage.error}"
            return f"a re-run resumes {where}"
    return (f"nothing: rounds 0..{status.rounds} are finished (a re-run prints the report; more `rounds` would "
            f"go on to round {status.rounds + 1})")


def format_status(status: RunStatus) -> str:
    lines = [f"run {status.name} ({status.method}) at {status.uri}",
             f"config digest {status.config_digest} (config.yaml), rounds 0..{status.rounds}"]
    for rs in status.round_status:
        parts = []
        if rs.config_digest is not None:
            parts = [_stage_text(s) for s in rs.stages]
        note = f" [config {rs.config_digest}]" if rs.other_config else ""
        lines.append(f"round {rs.index}: {rs.state}{note}" + (f": {', '.join(parts)}" if parts else ""))
    lines.append(f"next: {status.next}")
    return "\n".join(lines)


def _stage_text(s: StageStatus) -> str:
    if s.state == "done":
        return f"{s.name} done ({_duration(s.seconds)})"
    if s.state in ("running", "interrupted"):
        who = f"pid {s.pid} on {s.host}" + (f", Ray job {s.ray_job}" if s.ray_job else "")
        since = f" for {_duration(s.seconds)}" if s.seconds is not None and s.state == "running" else ""
        return f"{s.name} {s.state}{since} ({who})"
    if s.state in ("failed", "damaged"):
        return f"{s.name} {s.state} ({s.error})"
    if s.state == "stale":
        return f"{s.name} stale ({s.error})"
    return f"{s.name} not started"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
