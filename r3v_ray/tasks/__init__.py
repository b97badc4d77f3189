"""Tasks: the common record, the task interface, and a registry by name (imported lazily)."""

from __future__ import annotations

import importlib

from r3v_ray.tasks.base import Record, RecordError, Task, load_image

# name -> "module:Class"; benchmark tasks register here as they are added.
TASKS: dict[str, str] = {
    "synthetic": "r3v_ray.tasks.synthetic:SyntheticTask",
}


def get_task(name: str, **params) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**params)


__all__ = ["Record", "RecordError", "Task", "TASKS", "get_task", "load_image"]
