"""Connecting to Ray the way r3v's entrypoints expect.

A bare `ray.init()` joins whatever cluster /tmp/ray/ray_current_cluster last recorded, even one that has since
been stopped (it then hangs retrying). So: inside a submitted job (RAY_ADDRESS set by Ray) or when the user sets
RAY_ADDRESS, join that cluster; otherwise start a fresh local Ray.
"""

from __future__ import annotations

import os


def ensure_ray(**kwargs) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", **kwargs)
