"""Cores of its own for each CPU engine on a node.

Ray counts CPUs but does not say which cores an actor may use, and vLLM's automatic thread binding puts every
engine of a machine on the same first core (two samplers on 2 cores then share one). So each engine claims cores
with a lock file per core, scoped to its Ray node: the locks are held while the process lives and the kernel
drops them when it ends (a crashed or killed actor frees its cores), and engines of other Ray clusters on the same
machine claim in their own scope, as Ray itself does not share CPU counts across clusters either.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_held: list[IO] = []  # the open lock files: a claim lasts as long as this process


def node_scope() -> str:
    """The Ray node this process runs on, or "local" outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # no Ray, or a Ray without a runtime context here: one scope for the machine
        pass
    return "local"


def claim_cores(count: int, scope: str | None = None, allowed: list[int] | None = None) -> list[int]:
    """Up to `count` cores no other engine of this scope holds, lowest first; fewer (with a warning) when the
    scope's engines already hold the rest. `allowed` defaults to the cores this process may run on."""
    allowed = sorted(os.sched_getaffinity(0)) if allowed is None else sorted(allowed)
    directory = Path(tempfile.gettempdir()) / "r3v-cores" / (scope or node_scope())
    directory.mkdir(parents=True, exist_ok=True)
    got: list[int] = []
    for core in allowed:
        if len(got) == count:
            break
        handle = open(directory / f"core-{core}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        got.append(core)
    if len(got) < count:
        log.warning("asked for %d cores of their own, got %s: other engines of this node hold the rest", count, got)
    return got


def bind_process_to(cores: list[int]) -> None:
    """Run every thread of this process (and the threads it starts later) on `cores`, with as many torch threads."""
    import torch

    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
    torch.set_num_threads(len(cores))
