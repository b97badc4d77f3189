"""Tasks: the common record, the task interface, and a registry by name (imported lazily)."""

from __future__ import annotations

import importlib

from r3v_ray.tasks.base import ReadReport, Record, RecordError, Task, load_image

# name -> "module:Class"; benchmark tasks register here as they are added.
TASKS: dict[str, str] = {
    "synthetic": "r3v_ray.tasks.synthetic:SyntheticTask",
    "geoqa": "r3v_ray.tasks.geoqa:GeoQATask",
    "tabmwp": "r3v_ray.tasks.tabmwp:TabMWPTask",
    "chartqa": "r3v_ray.tasks.chartqa:ChartQATask",
    "clevr_math": "r3v_ray.tasks.clevr_math:ClevrMathTask",
    "m3cot": "r3v_ray.tasks.m3cot:M3CoTTask",
    "generic": "r3v_ray.tasks.generic:GenericTask",
}


def get_task(name: str, **params) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**params)


__all__ = ["ReadReport", "Record", "RecordError", "Task", "TASKS", "get_task", "load_image"]
