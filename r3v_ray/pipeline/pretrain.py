"""A tiny base taught perception and arithmetic once (config: model.tiny.pretrain; docs/reproduction.md).

The random tiny model at model.path is fine-tuned in full, vision tower included, on counting captions of a pool
of the built-in task's images (none of them a train or test question's image) and on arithmetic in the
rationales' form, with the rounds' own trainer (r3v_ray/training). The result is cached beside model.path under a
key of every setting that changes it (pretrained_path), so a changed setting builds a new base and an unchanged one
is reused. The pool and the training data live on the driver's disk: a pretraining runs on one node.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

from r3v_ray.run import store
from r3v_ray.config import RunConfig, TrainingConfig
from r3v_ray.pipeline.prepare import data_settings

_TRAINING_KEPT = ("global_batch_size", "micro_batch_size", "max_seq_len", "zero_stage", "bf16", "seed")


def pretrain_training(cfg: RunConfig) -> TrainingConfig:
    """The pretraining's own training settings: full fine-tuning with the vision tower, the pretrain section's
    epochs and lr, and the rounds' batch shape and seed (the rounds' LoRA or reflection settings do not apply)."""
    p = cfg.model.tiny.pretrain
    kept = {k: getattr(cfg.training, k) for k in _TRAINING_KEPT}
    return TrainingConfig(**kept, finetune="full", freeze_vision=False, epochs=p.epochs, lr=p.lr)


def pretrain_settings(cfg: RunConfig) -> dict:
    """Everything that changes the pretrained base: the tiny model with its pretrain section, the task's data (its
    questions are kept out of the pool: the settings its data directory is stamped with), the training settings and
    the number of workers (the data split)."""
    return {"tiny": cfg.model.tiny.model_dump(mode="json"),
            "task": data_settings(cfg),
            "training": pretrain_training(cfg).model_dump(mode="json"),
            "num_train_workers": cfg.resources.num_train_workers}


def pretrained_path(cfg: RunConfig) -> str:
    """Where the pretrained base is cached: beside model.path, keyed on pretrain_settings."""
    key = hashlib.sha256(json.dumps(pretrain_settings(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.model.path.rstrip('/')}-pretrained-{key}"


def task_layouts(task, cfg: RunConfig) -> set[tuple]:
    """The layouts of the task's train and test questions (generated as ensure_data writes them)."""
    return {tuple(r.metadata["layout"]) for split, n in (("train", cfg.task.num_train), ("test", cfg.task.num_test))
            for r in task.generate_records(split, n, cfg.task.data_seed)}


def pool_examples(task, records: list, captions: int, arithmetic: list[tuple[str, str]], seed: int,
                  counts: int = 0) -> list[dict]:
    """Training examples (r3v_ray/method/reflect.py's form, term `warmup`): `captions` counting captions per pool image,
    each under another caption prompt (a seeded choice), `counts` statements of some colours' counts per image in a
    seeded order (task.count_statement), and the arithmetic pairs, each shown with a pool image (in
    turn) that it does not ask about: a micro-batch without any image would leave the trained vision tower without
    gradients on its rank, and DeepSpeed's gradient all-reduce then differs in size between the ranks."""
    from r3v_ray.method.reflect import caption_examples, example

    out = []
    for r in records:
        out += caption_examples([r], task, captions, seed, stream="pool-caption")
        rng = random.Random(f"{seed}|pool-counts|{r.id}")
        out += [example("warmup", r.id, *task.count_statement(r.metadata["layout"], rng), r.image)
                for _ in range(counts)]
    out += [example("warmup", f"arithmetic-{i:05d}", prompt, target, records[i % len(records)].image)
            for i, (prompt, target) in enumerate(arithmetic)]
    return out


def build_pretrained(out: str | Path, cfg: RunConfig, random_model: str) -> None:
    """Pretrain `random_model` as cfg.model.tiny.pretrain says and write the model directory into `out`."""
    from r3v_ray.tasks import get_task
    from r3v_ray.training import train
    from r3v_ray.training.examples import write_examples

    p = cfg.model.tiny.pretrain
    task = get_task("synthetic", **cfg.task.params)
    questions = task_layouts(task, cfg)
    records = task.pool_records(p.num_images, p.data_seed, questions)
    overlap = questions & {tuple(r.metadata["layout"]) for r in records}
    if overlap:  # pool_records draws them again; a pool image that is a question's would leak the test set
        raise RuntimeError(f"pretraining pool: {len(overlap)} images are the task's questions' images")
    work = Path(tempfile.mkdtemp(prefix="r3v-pretrain-"))
    try:
        (work / "images").mkdir()
        for r in records:
            r.image = str(work / "images" / f"{r.id}.png")
            task.render(r).save(r.image, format="PNG")
        examples = pool_examples(task, records, p.captions, task.arithmetic_examples(p.arithmetic, p.data_seed),
                                 p.data_seed, p.counts)
        write_examples(str(work / "train.parquet"), examples)
        data = cfg.model_dump(mode="json")
        data.update(name=f"{cfg.name}-pretrain", model={"path": random_model},
                    training=pretrain_training(cfg).model_dump(mode="json"))
        data["task"]["data_dir"] = str(work)
        result = train(RunConfig.model_validate(data), str(work / "train.parquet"), random_model,
                       str(work / "model"), 0)
        shutil.copytree(work / "model", out, dirs_exist_ok=True)
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
        store.write_json(str(Path(out) / "r3v_pretrain.json"),
                         {"examples": len(examples), "pool_images": len(records), "metrics": metrics})
    finally:
        shutil.rmtree(work, ignore_errors=True)
