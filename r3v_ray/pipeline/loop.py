"""The self-training loop: rounds 0..K in order, locally or as one Ray job per round on a cluster.

Locally every round runs in this process's Ray. With an address, each round is submitted with Ray's
JobSubmissionClient (submission id `r3v-<run>-round-<k>`), its logs are streamed here, and the loop stops at the
first failed round. Rounds already finished are skipped either way (each round's manifest says so).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from r3v_ray.observe import console
from r3v_ray.config import RunConfig
from r3v_ray.cluster.preflight import absolute_overrides
from r3v_ray.run.layout import RunDir

log = logging.getLogger("r3v.selftrain")

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RoundJobError(RuntimeError):
    """A round's job failed or cannot be submitted; the message names the job and what to do."""


def round_finished(cfg: RunConfig, k: int) -> bool:
    """Round k's last stage finished under this config, and every output of its stages is as recorded (sizes and
    checksums): a finished round is trusted, and skipped, only then. A damaged one is a DamagedRunError naming the
    file and what to do (with --force the loop runs the round again instead, which redoes the damaged stage)."""
    round_dir = RunDir.of(cfg).round(k)
    manifest = round_dir.manifest()
    if manifest is None or not manifest.done("eval", cfg.digest()):
        return False
    damage = round_dir.first_damage(manifest)
    if damage:
        raise round_dir.damaged(*damage)
    return True


def run_local(cfg: RunConfig, from_round: int = 0, force: bool = False) -> dict:
    from r3v_ray.pipeline.round import run_round

    metrics = {}
    for k in range(from_round, cfg.rounds + 1):
        if not force and round_finished(cfg, k):
            log.info("round %d already finished under this config, skipped", k)
            continue
        start = time.time()
        metrics[k] = run_round(cfg, k, force=force, job_name=f"r3v {cfg.name} rounds {from_round}-{cfg.rounds}")
        log.info("round %d finished in %.1fs", k, time.time() - start)
    return metrics


def _absolute_overrides(cfg: RunConfig) -> list[str]:
    """A submitted job runs in Ray's copy of the working dir, where relative paths are refused
    (r3v_ray/cluster/preflight.py): they are sent as absolute paths from here, so data and outputs live where they would
    for a local run (on a real cluster, storage every node reaches: s3://, gs:// or a shared file system)."""
    return absolute_overrides(cfg, os.getcwd())


def _free_submission_id(client, base: str) -> str:
    """`base`, or `base-attempt-N` after earlier attempts; refuses while an attempt is still pending or running
    (two jobs writing one round directory would race)."""
    # Jobs started by a plain `ray.init(address=...)` driver have no submission id: they are not ours.
    jobs = {j.submission_id: str(j.status).split(".")[-1] for j in client.list_jobs() if j.submission_id}
    running = [sid for sid, status in jobs.items()
               if (sid == base or sid.startswith(f"{base}-attempt-")) and status not in TERMINAL]
    if running:
        raise RoundJobError(f"{running[0]} is still {jobs[running[0]]}: wait for it (ray job logs -f {running[0]}) "
                           f"or stop it (ray job stop {running[0]}) before submitting this round again")
    taken = set(jobs)
    if base not in taken:
        return base
    n = 2
    while f"{base}-attempt-{n}" in taken:
        n += 1
    return f"{base}-attempt-{n}"


async def _tail(client, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)


def submit_rounds(cfg: RunConfig, config_path: str, address: str, overrides: list[str], from_round: int = 0,
                  force: bool = False, working_dir: str = ".") -> list[str]:
    """Submit rounds from_round..K one job at a time; returns the submission ids. Raises on the first failure."""
    from ray.job_submission import JobSubmissionClient

    from r3v_ray.pipeline.prepare import check_built
    from r3v_ray.cluster.connect import cluster_address
    from r3v_ray.pipeline.round import check_config

    # What the first job would refuse is refused here, before anything is submitted.
    check_config(cfg, force)
    check_built(cfg)
    dashboard = cluster_address(address, "dashboard")
    client = JobSubmissionClient(dashboard)
    sets = overrides + _absolute_overrides(cfg)
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR") if k in os.environ}
    env.update({k: os.environ.get(k, v) for k, v in console.WORKER_ENV.items()})
    ids = []
    for k in range(from_round, cfg.rounds + 1):
        if not force and round_finished(cfg, k):
            log.info("round %d already finished under this config, not submitted", k)
            continue
        args = ["python", "jobs/round.py", "--config", config_path, "--round", str(k)]
        args += [a for s in sets for a in ("--set", s)] + (["--force"] if force else [])
        args += ["--verbose"] if console.verbose() else []
        submission_id = _free_submission_id(client, f"r3v-{cfg.name}-round-{k}")
        client.submit_job(
            entrypoint=" ".join(_quote(a) for a in args),
            submission_id=submission_id,
            runtime_env={"working_dir": working_dir, "env_vars": env,
                         "excludes": [".venv", "runs", ".git", "__pycache__", "*.egg-info"]},
            # job_name: the dashboard's Jobs view shows it in its Name column.
            metadata={"job_name": f"r3v {cfg.name} round {k}", "r3v_run": cfg.name, "r3v_round": str(k),
                      "r3v_method": cfg.method},
        )
        log.info("submitted round %d as %s", k, submission_id)
        ids.append(submission_id)
        try:
            asyncio.run(_tail(client, submission_id))
        except Exception as exc:  # log streaming is a convenience; the status below is what counts
            log.warning("log streaming stopped: %s", exc)
        status = client.get_job_status(submission_id)
        while str(status).split(".")[-1] not in TERMINAL:
            time.sleep(2)
            status = client.get_job_status(submission_id)
        status = str(status).split(".")[-1]
        if status != "SUCCEEDED":
            # Ray's message repeats the end of the log streamed above: its first sentence is enough here.
            reason = (client.get_job_info(submission_id).message or "").split(", last available logs")[0]
            raise RoundJobError(f"round {k} ({submission_id}) {status}: {reason.strip()} (its log: ray job logs "
                                f"--address {dashboard} {submission_id})")
    return ids


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
