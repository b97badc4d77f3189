"""Idempotent preparation of what a run needs before its first stage: the model directory and the task data.

Both are built into a temporary directory and renamed into place, so an interrupted build is simply redone.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from r3v_ray.config import RunConfig

log = logging.getLogger(__name__)


STAMP = "r3v_built_with.json"


def _build_atomically(target: Path, build, settings: dict) -> Path:
    """Build into a temporary directory and rename it into place, stamped with the settings that built it. An
    existing directory is reused only if it was built with the same settings: stale data never passes silently."""
    settings = json.loads(json.dumps(settings, sort_keys=True))  # as the stamp reads back (tuples become lists)
    if target.exists():
        stamp = target / STAMP
        if not stamp.is_file():  # made by hand (e.g. `r3v make-data`): the user's own, used as it is
            log.info("using %s as it is (not built by r3v from a config)", target)
            return target
        built_with = json.loads(stamp.read_text())
        if built_with != settings:
            raise ValueError(
                f"{target} was built with {built_with}, but the config asks for {settings}; remove the directory "
                "to rebuild it, or point the config at another one"
            )
        return target
    tmp = target.with_name(f".{target.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    (tmp / STAMP).write_text(json.dumps(settings, sort_keys=True))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_model(cfg: RunConfig) -> str:
    """The model path; builds the tiny model there first when the config asks for one and it is missing."""
    if cfg.model.tiny is None:
        return cfg.model.path
    from r3v_ray.models.tiny import TinySpec, build_tiny_model

    spec = TinySpec(**cfg.model.tiny.model_dump())
    target = Path(cfg.model.path)
    if not target.exists():
        log.info("building the tiny model into %s", target)
    return str(_build_atomically(target, lambda tmp: build_tiny_model(tmp, spec), cfg.model.tiny.model_dump()))


def ensure_data(cfg: RunConfig) -> str:
    """The task's data directory; writes the built-in synthetic task there first when missing."""
    if cfg.task.name != "synthetic":
        return cfg.task.data_dir
    from r3v_ray.tasks import get_task

    task = get_task("synthetic", **cfg.task.params)
    target = Path(cfg.task.data_dir)
    if not target.exists():
        log.info("writing the synthetic task into %s", target)
    build = lambda tmp: task.write_dataset(tmp, cfg.task.num_train, cfg.task.num_test, cfg.task.data_seed)  # noqa: E731
    settings = {"params": cfg.task.params, "num_train": cfg.task.num_train, "num_test": cfg.task.num_test,
                "data_seed": cfg.task.data_seed}
    return str(_build_atomically(target, build, settings))
