"""Training throughput: one Ray Train + DeepSpeed worker against a plain single-process torch loop.

Both sides train the same tiny model on the same R3V examples with the same step plan, loss, AdamW settings,
gradient clipping and thread count. Per-step time (collate, forward, backward, optimizer step) is compared with
the first step of each side left out as warm-up, and the median step taken (the plain loop runs before and
after the Ray run, so load from other processes hits both sides alike); Ray/DeepSpeed start-up (cluster, worker group, model load,
deepspeed.initialize, checkpoint and export) is reported separately. The last line is one JSON object:
{"benchmark": "training", "overhead": ray_deepspeed_time / plain_time, ...}. Target: overhead <= 1.15.

    .venv/bin/python benchmarks/training.py [--quick]
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
from r3v_ray.raycluster import start_local  # noqa: E402  (a local Ray on 127.0.0.1)
from r3v_ray.reflect import build_training_data  # noqa: E402
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
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()
    questions = args.questions or (16 if args.quick else 64)

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = str(build_tiny_model(tmp / "model", TinySpec(hidden_size=args.hidden_size, num_layers=args.num_layers)))
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
        plain = plain_loop(cfg, train_uri, model_path)[1:]
        start_local(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            t0 = time.perf_counter()
            # As a round trains: rank 0 draws its progress bar and writes TensorBoard scalars every step.
            result = train(cfg, train_uri, model_path, str(tmp / "out"), round_index=1,
                           events_uri=str(tmp / "tensorboard"))
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        plain += plain_loop(cfg, train_uri, model_path)[1:]

    all_ray_steps = [h["seconds"] for h in result.metrics["history"]]
    ray_steps = all_ray_steps[1:]  # the first step of each side is warm-up
    examples_per_step = result.metrics["plan"]["global_batch"]
    plain_time, ray_time = statistics.median(plain), statistics.median(ray_steps)
    out = {
        "benchmark": "training",
        "overhead": round(ray_time / plain_time, 3),
        "ray_deepspeed_examples_per_s": round(examples_per_step / ray_time, 2),
        "plain_examples_per_s": round(examples_per_step / plain_time, 2),
        "ray_deepspeed_step_s": round(ray_time, 4),
        "plain_step_s": round(plain_time, 4),
        "overhead_mean": round((sum(ray_steps) / len(ray_steps)) / (sum(plain) / len(plain)), 3),
        "startup_s": round(wall - sum(all_ray_steps), 2),
        "ray_wall_s": round(wall, 2),
        "steps": len(all_ray_steps),
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
