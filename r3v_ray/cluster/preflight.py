"""Checks before a run starts anything: its storage can be written, its paths mean something where it runs, and
every node of the cluster sees them. Each failure names the setting, the location and the reason, within seconds
rather than after minutes of actor retries.
"""

from __future__ import annotations

import hashlib
import logging
import os

from r3v_ray.run import store
from r3v_ray.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0  # a node must start one Python worker in this time


def in_submitted_job() -> bool:
    """True in the driver of a `ray job submit` job (Ray's job supervisor sets this variable for it)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def model_path_is_location(cfg: RunConfig, base: str = ".") -> bool:
    """model.path names a place (a URI, a tiny model built there, an existing directory, here or under `base`),
    not a hub name."""
    path = cfg.model.path
    return (store.is_uri(path) or cfg.model.tiny is not None or os.path.exists(path)
            or os.path.exists(os.path.join(base, path)))


def locations(cfg: RunConfig, base: str = ".") -> dict[str, str]:
    """{config key: value} of the settings that are places in storage."""
    out = {"storage.root": cfg.storage.root, "task.data_dir": cfg.task.data_dir}
    if model_path_is_location(cfg, base):
        out["model.path"] = cfg.model.path
    return out


def relative_locations(cfg: RunConfig, base: str = ".") -> dict[str, str]:
    """The places of `locations` given as relative paths."""
    return {k: v for k, v in locations(cfg, base).items() if not store.is_uri(v) and not os.path.isabs(v)}


def absolute_overrides(cfg: RunConfig, base: str) -> list[str]:
    """`--set KEY=VALUE` overrides that make the config's relative paths absolute ones under `base`."""
    base = os.path.abspath(base)
    return [f"{k}={os.path.normpath(os.path.join(base, v))}" for k, v in relative_locations(cfg, base).items()]


def check_job_paths(cfg: RunConfig) -> None:
    """Inside a submitted job the working directory is Ray's temporary copy of the uploaded one (or the job
    agent's own), so a relative path would read or write where nobody looks afterwards: refuse it, in one line
    naming each path and the fix (`--base-dir "$PWD"`: the submitting shell fills in where the user is)."""
    if not in_submitted_job():
        return
    relative = relative_locations(cfg)
    if relative:
        names = ", ".join(f"{k}={v}" for k, v in relative.items())
        raise ConfigError(
            f"relative path(s) in a Ray job: {names}. The job runs in {os.getcwd()} (Ray's copy of the working "
            'directory), where outputs are lost: add --base-dir "$PWD" to the job\'s command to resolve them against '
            "the directory you submit from (it must be one every node sees), or give absolute paths or URIs "
            "(e.g. --set storage.root=s3://bucket/runs); `python jobs/selftrain.py --address` does this for you."
        )


def check_storage(cfg: RunConfig) -> None:
    """storage.root can be written (a probe file is written, read and deleted), and model.path / task.data_dir,
    when they are URIs r3v does not build, exist. A StorageError names the URI and the filesystem's error."""
    store.check_access(cfg.run_dir, "storage.root")
    builds = {"model.path": cfg.model.tiny is not None, "task.data_dir": cfg.task.name == "synthetic"}
    for key, uri in locations(cfg).items():
        if key == "storage.root" or not store.is_uri(uri):
            continue
        try:
            there = store.exists(uri)
        except Exception as exc:
            raise store.StorageError(f"{key} {uri} cannot be read: {type(exc).__name__}: {exc}") from None
        if not there and not builds[key]:
            raise store.StorageError(f"{key} {uri} does not exist")


def _probe(checks: list[tuple[str, str, str | None]]) -> list[str]:
    """Runs on one node: for each (config key, URI, sha256 of its bytes or None for "exists"), what is wrong."""
    import socket

    problems = []
    for key, uri, digest in checks:
        try:
            if digest is None:
                if not store.exists(uri):
                    problems.append(f"{key}: {uri} does not exist there")
            elif hashlib.sha256(store.read_bytes(uri)).hexdigest() != digest:
                problems.append(f"{key}: {uri} there is another file than the driver wrote")
        except FileNotFoundError:
            problems.append(f"{key}: {uri} does not exist there")
        except Exception as exc:
            problems.append(f"{key}: cannot read {uri} there ({type(exc).__name__}: {exc})")
    return [f"node {socket.gethostname()}: {p}" for p in problems]


def check_nodes(cfg: RunConfig, config_uri: str, model_path: str, data_dir: str) -> None:
    """Every other alive node of the cluster reads the run's config.yaml as this driver wrote it, and sees the
    model and the data: a run directory on this machine's disk fails here, not in a sampler after retries.
    Nodes an autoscaler adds later are not checked (they are not there yet)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not nodes:
        return
    checks = [("storage.root", config_uri, hashlib.sha256(store.read_bytes(config_uri)).hexdigest())]
    if model_path_is_location(cfg):
        checks.append(("model.path", model_path, None))
    checks.append(("task.data_dir", data_dir, None))
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {n["NodeManagerAddress"]: probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(checks) for n in nodes}
    ids = {n["NodeManagerAddress"]: n["NodeID"] for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    problems = []
    for address, ref in refs.items():
        try:
            if ref not in ready:
                raise TimeoutError(f"no answer in {PROBE_TIMEOUT_S:.0f}s")
            problems += [f"{p} (address {address})" for p in ray.get(ref)]
        except Exception as exc:
            # An autoscaler may remove an idle node meanwhile: a node that is gone has nothing to see.
            if any(n["NodeID"] == ids[address] and n.get("Alive") for n in ray.nodes()):
                problems.append(f"node {address}: storage probe failed ({type(exc).__name__}: {exc})")
    if problems:
        local = [k for k, v in locations(cfg).items() if store.is_local(v)]
        hint = (f" {', '.join(local)} {'is' if len(local) == 1 else 'are'} on this machine's disk, which the workers "
                "cannot see: on a cluster use storage every node reaches (s3://..., gs://..., or a shared file system "
                "mounted at the same path on every node)." if local else
                " Every node needs the storage's credentials and endpoint (e.g. the AWS_* variables or an instance role).")
        raise store.StorageError(f"{len(problems)} problem(s) with the run's storage on other nodes of the cluster:\n  "
                                 + "\n  ".join(problems) + "\n" + hint.strip())
    log.info("storage probe: %d other node(s) see %s", len(nodes), cfg.run_dir)
