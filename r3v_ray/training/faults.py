"""A test hook, not an option: one injected worker failure for the fault-tolerance test (tests/test_training.py).

With R3V_TEST_FAIL_ONCE_AT_STEP=<step> in the environment of the process that calls r3v_ray.training.train, the
last-ranked worker raises once when it reaches that step; a marker file next to Ray Train's checkpoints records that
it did, so the worker group Ray Train restarts from the last checkpoint goes on. Unset (always, outside that test),
the step loop pays one `is None` check per step.
"""

from __future__ import annotations

import os

from r3v_ray import store

ENV = "R3V_TEST_FAIL_ONCE_AT_STEP"


def from_env(storage_path: str, run_name: str) -> dict | None:
    """The fault to inject into a training whose Ray Train storage is `storage_path`/`run_name`, or None."""
    step = os.environ.get(ENV)
    if not step:
        return None
    return {"step": int(step), "marker": f"{storage_path.rstrip('/')}/{run_name}/fault-injected"}


def maybe_fail(fault: dict | None, step: int, rank: int, world_size: int) -> None:
    if fault is None or step != fault["step"] or rank != world_size - 1 or store.exists(fault["marker"]):
        return
    store.write_text(fault["marker"], "injected\n")  # once only: the restarted worker group goes on
    raise RuntimeError(f"injected worker failure at step {step} ({ENV}, the fault-tolerance test)")
