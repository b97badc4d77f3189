"""Training throughput: one Ray Train + DeepSpeed worker against a plain single-process torch loop.

Both sides train the same tiny model on the same R3V examples with the same step plan, loss, AdamW settings,
gradient clipping and thread count. Per-step time (collate, forward, backward, optimizer step) is compared with
the first step of each run left out as warm-up and the median step of each run taken; Ray/DeepSpeed start-up
(worker group, model load, deepspeed.initialize, checkpoint and export) is reported separately, never counted.

Both sides run in Ray worker processes of the same local cluster (the plain loop as a Ray task with the train
worker's CPUs): Ray starts its workers at nice 15, and a plain loop in the driver at nice 0 took a far larger share
of a busy machine than the train worker beside it, which read as per-step overhead (1.5 and more under load, 1.03
on a quiet machine). And a single pair of runs cannot tell a real change from machine load (on a shared 2-core
machine one run's median step moves by 10-40%), so each side runs `--repeats` times, interleaved (plain, Ray,
plain, Ray, ...), and `overhead` is the median of the per-pair ratios (each Ray run over the plain run just before
it), with their spread (min, max) beside it. The last line is one JSON object:
{"benchmark": "training", "overhead": ..., "overhead_spread": [min, max], ...}. Target: overhead <= 1.10.

    .venv/bin/python benchmarks/training.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers with OMP_NUM_THREADS=<their CPUs>; the plain loop gets the same, or its stray OpenMP
# threads (image preprocessing, BLAS) would slow it down on a busy machine and flatter the comparison.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r3v_ray.config import RunConfig  # noqa: E402
from r3v_ray.models import load_processor  # noqa: E402
from r3v_ray.models.tiny import TinySpec, build_tiny_model  # noqa: E402
from r3v_ray.pipeline.prepare import tokenizer_corpus
from r3v_ray.cluster.connect import start_local  # noqa: E402  (a local Ray on 127.0.0.1)
from r3v_ray.method.reflect import build_training_data  # noqa: E402
from r3v_ray.tasks import get_task  # noqa: E402
from r3v_ray.training import ReflectionCollator, read_examples, train, write_examples  # noqa: E402
from r3v_ray.training.loss import combine, term_nll_sums, term_token_counts, term_weights  # noqa: E402
from r3v_ray.training.collator import model_inputs  # noqa: E402
from r3v_ray.training.model_setup import build_trainable_model, trainable_parameters  # noqa: E402
from r3v_ray.training.plan import global_batches, lr_factor, make_plan, worker_micro_batches  # noqa: E402
from r3v_ray.training.worker import filter_by_length  # noqa: E402


def make_examples(data_dir: Path, n_questions: int) -> list[dict]:
    """Teacher rationale as the positive and a wrong rationale as the negative of every question."""
    task = get_task("synthetic")
    task.write_dataset(data_dir, num_train=n_questions, num_test=1, seed=0)
    records = {r.id: r for r in task.read(data_dir, "train")}
    pool = []
    for qid, r in records.items():
        bad = "B" if r.answer == "A" else "A" if r.answer == "B" else str(int(r.answer) + 1)
        pool.append(dict(question_id=qid, round=1, sample_index=0, rationale=r.rationale, extracted_answer=r.answer, correct=True))
        pool.append(dict(question_id=qid, round=1, sample_index=1, rationale=f"I think so.\nAnswer: {bad}", extracted_answer=bad, correct=False))
    examples, _ = build_training_data(pool, records, task, RunConfig().reflect, round_index=1)
    return examples


def plain_loop(cfg: RunConfig, train_uri: str, model_path: str) -> list[float]:
    """Seconds per optimizer step of the same training without Ray or DeepSpeed."""
    torch.set_num_threads(cfg.resources.torch_threads)
    tcfg = cfg.training
    collator = ReflectionCollator(load_processor(model_path))
    examples, lengths, _ = filter_by_length(read_examples(train_uri), collator, tcfg.max_seq_len)
    plan = make_plan(len(examples), tcfg, world_size=1)
    model = build_trainable_model(model_path, tcfg)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, plan.warmup_steps))
    weights = term_weights(tcfg.alpha, tcfg.beta)
    seconds = []
    for ids in global_batches(len(examples), plan, tcfg.seed):
        t0 = time.perf_counter()
        batches = [collator([examples[i] for i in mb]) for mb in worker_micro_batches(ids, lengths, plan, 0)]
        counts = sum(term_token_counts(b["labels"], b["task_ids"]) for b in batches)
        for b in batches:
            sums = term_nll_sums(model(**model_inputs(b)).logits, b["labels"], b["task_ids"])
            combine(sums, counts, weights).backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (CI smoke)")
    parser.add_argument("--questions", type=int, default=None, help="training questions (5 examples each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved (at least 3)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()
    questions = args.questions or (32 if args.quick else 64)
    repeats = max(3, args.repeats)

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = str(build_tiny_model(tmp / "model", TinySpec(hidden_size=args.hidden_size, num_layers=args.num_layers), corpus=tokenizer_corpus()))
        train_uri = str(tmp / "train.parquet")
        write_examples(train_uri, make_examples(tmp / "data", questions))
        # the demo's training settings, on one worker
        cfg = RunConfig.model_validate(
            {
                "training": {"lr": 3e-3, "epochs": 1.0, "global_batch_size": 16, "micro_batch_size": 8,
                             "zero_stage": args.zero_stage, "checkpoint_every_steps": 0},
                "resources": {"num_train_workers": 1, "cpus_per_train_worker": 1, "torch_threads": 1},
            }
        )
        plain_runs, ray_runs, startups, walls, results = [], [], [], [], []
        start_local(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        plain_task = ray.remote(num_cpus=cfg.resources.cpus_per_train_worker)(plain_loop)
        try:
            for r in range(repeats):
                plain_runs.append(ray.get(plain_task.remote(cfg, train_uri, model_path))[1:])  # first step: warm-up
                t0 = time.perf_counter()
                # As a round trains: rank 0 draws its progress bar and writes TensorBoard scalars every step.
                result = train(cfg, train_uri, model_path, str(tmp / f"out-{r}"), round_index=1,
                               events_uri=str(tmp / f"tensorboard-{r}"))
                wall = time.perf_counter() - t0
                steps = [h["seconds"] for h in result.metrics["history"]]
                ray_runs.append(steps[1:])
                startups.append(wall - sum(steps))
                walls.append(wall)
                results.append(result)
        finally:
            ray.shutdown()

    plain_med = [statistics.median(p) for p in plain_runs]
    ray_med = [statistics.median(p) for p in ray_runs]
    ratios = [r / p for r, p in zip(ray_med, plain_med)]
    result = results[-1]
    examples_per_step = result.metrics["plan"]["global_batch"]
    plain_time, ray_time = statistics.median(plain_med), statistics.median(ray_med)
    out = {
        "benchmark": "training",
        "overhead": round(statistics.median(ratios), 3),
        "overhead_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "overhead_per_repeat": [round(x, 3) for x in ratios],
        "repeats": repeats,
        "ray_deepspeed_examples_per_s": round(examples_per_step / ray_time, 2),
        "plain_examples_per_s": round(examples_per_step / plain_time, 2),
        "ray_deepspeed_step_s": round(ray_time, 4),
        "plain_step_s": round(plain_time, 4),
        "startup_s": round(statistics.median(startups), 2),  # per Ray run, outside the steps
        "ray_wall_s": round(statistics.median(walls), 2),
        "steps": len(result.metrics["history"]),
        "examples": result.metrics["examples"],
        "global_batch": examples_per_step,
        "zero_stage": args.zero_stage,
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers},
        "final_loss_ray": round(result.metrics["final_loss"], 4),
        "quick": args.quick,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
