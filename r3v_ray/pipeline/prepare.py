"""Idempotent preparation of what a run needs before its first stage: the model directory and the task data.

Both are built into a temporary directory and published (r3v_ray/run/store.py publish_dir: a rename on a local disk,
a marker written last on an object store), so an interrupted build is simply redone. Either may be a URI.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from r3v_ray.run import store
from r3v_ray.config import RunConfig

log = logging.getLogger(__name__)


STAMP = "r3v_built_with.json"


def _check_stamp(target: str, settings: dict) -> bool:
    """True when `target` exists and may be used for `settings`; raises when it was built with others."""
    if not store.exists(target):
        return False
    stamp = store.join(target, STAMP)
    if not store.is_local(target) and store.exists(stamp) and store.published(target) is None:
        log.info("%s: an unfinished upload of an earlier build; building it again", target)
        return False
    if not store.exists(stamp):  # made by hand (e.g. `r3v make-data`): the user's own, used as it is
        log.info("using %s as it is (not built by r3v from a config)", target)
        return True
    built_with = store.read_json(stamp)
    if built_with != settings:
        raise ValueError(
            f"{target} was built with {built_with}, but the config asks for {settings}; remove the directory "
            "to rebuild it, or point the config at another one"
        )
    return True


def _build_atomically(target: str, build, settings: dict) -> str:
    """Build into a temporary directory and publish it at `target` (a local path or a URI), stamped with the settings
    that built it. An existing directory is reused only if it was built with the same settings: stale data never
    passes silently. An interrupted build is simply redone."""
    settings = json.loads(json.dumps(settings, sort_keys=True))  # as the stamp reads back (tuples become lists)
    if _check_stamp(target, settings):
        return target
    if store.is_local(target):  # build on the target's own disk, so that publishing is a rename
        path = Path(store.resolve(target)[1])
        tmp = path.with_name(f".{path.name}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="r3v-build-"))
    try:
        build(tmp)
        (tmp / STAMP).write_text(json.dumps(settings, sort_keys=True))
        store.publish_dir(str(tmp), target, move=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tokenizer_corpus() -> list[str]:
    """Text the tiny model's tokenizer learns merges from: the built-in task's questions and rationales plus the
    method's prompt words."""
    from r3v_ray.method.prompts import PROMPT_WORDS
    from r3v_ray.tasks.synthetic import SyntheticTask

    task = SyntheticTask()
    lines = list(PROMPT_WORDS)
    for record in task.generate_records("train", 400, seed=12345):
        lines += [task.cot_prompt(record), record.rationale or "", task.format_answer(record.answer)]
    return lines


def _model_settings(cfg: RunConfig) -> dict:
    return cfg.model.tiny.model_dump(exclude={"pretrain"})  # the random model's; the pretrained base has its own


def data_settings(cfg: RunConfig) -> dict:
    """What the built-in task's data directory is stamped with (and the pretrained base keyed on)."""
    return {"params": cfg.task.params, "num_train": cfg.task.num_train, "num_test": cfg.task.num_test,
            "data_seed": cfg.task.data_seed}


def check_built(cfg: RunConfig) -> None:
    """Refuse now what ensure_model / ensure_data would refuse: a directory built with other settings (for
    submitters, which should not find out from a job's log)."""
    if cfg.model.tiny is not None:
        _check_stamp(cfg.model.path, json.loads(json.dumps(_model_settings(cfg), sort_keys=True)))
    if cfg.task.name == "synthetic":
        _check_stamp(cfg.task.data_dir, json.loads(json.dumps(data_settings(cfg), sort_keys=True)))


def ensure_model(cfg: RunConfig) -> str:
    """The path of the model rounds start from; builds the tiny model first when the config asks for one and it is
    missing, and with model.tiny.pretrain its pretrained base (beside it, keyed on its settings; needs Ray)."""
    if cfg.model.tiny is None:
        return cfg.model.path
    from r3v_ray.models.tiny import TinySpec, build_tiny_model

    spec = TinySpec(**_model_settings(cfg))
    if not store.exists(cfg.model.path):
        log.info("building the tiny model into %s", cfg.model.path)
    built = _build_atomically(cfg.model.path, lambda tmp: build_tiny_model(tmp, spec, corpus=tokenizer_corpus()),
                              _model_settings(cfg))
    if cfg.model.tiny.pretrain is None:
        return built
    from r3v_ray.pipeline.pretrain import build_pretrained, pretrain_settings, pretrained_path

    target = pretrained_path(cfg)
    if not store.exists(target):
        log.info("pretraining the tiny model into %s", target)
    return _build_atomically(target, lambda tmp: build_pretrained(tmp, cfg, built), pretrain_settings(cfg))


def ensure_data(cfg: RunConfig) -> str:
    """The task's data directory; writes the built-in synthetic task there first when missing."""
    if cfg.task.name != "synthetic":
        return cfg.task.data_dir
    from r3v_ray.tasks import get_task

    task = get_task("synthetic", **cfg.task.params)
    if not store.exists(cfg.task.data_dir):
        log.info("writing the synthetic task into %s", cfg.task.data_dir)
    build = lambda tmp: task.write_dataset(tmp, cfg.task.num_train, cfg.task.num_test, cfg.task.data_seed)  # noqa: E731
    return _build_atomically(cfg.task.data_dir, build, data_settings(cfg))
