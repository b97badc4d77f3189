"""A round's fixed cost: one demo-sized round (configs/demo.yaml, round 1, so sampling is included) split per
stage into start-up and hand-over against work.

Round 0 is built first (warm-up data, M0), untimed; then round 1 runs as `make demo` runs it (the same process and
Ray), and its manifest.json gives each stage's wall time and the work inside it, as the stages record them:
- sample: the Ray Data pass's generating time (first batch start to last batch end, SamplingStats.generate_seconds);
  the rest is the engine-actor pool (actor start, model load) and handing the samples over (labeling, the write).
- train: the optimizer steps (train_seconds); the rest is the worker's set-up (imports, data, model load,
  deepspeed.initialize), the Ray Train worker group's start (controller and helper actors, worker actors, process
  group, the train function's imports), the final checkpoint with the export, and its publication.
- eval: its sampling pass's generating time, as for sample; the rest is the pool and the metrics and writes.
- build: all of it counts as hand-over (reading the samples, building and writing the training set).
- driver: the round's wall time outside its stages (checks, manifests, the report).
The last line is one JSON object: {"benchmark": "round", "overhead_s": <round wall - work>, "work_s": ...,
"wall_s": ..., "stages": {...}}. Target: overhead_s <= 15 on the demo config.

    .venv/bin/python benchmarks/round.py [--quick] [--keep DIR]

--quick runs a smaller round (40 train / 20 test questions, 1 epoch): a smoke run, its figures are not the target's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(key, value)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stage_split(stages: dict) -> dict:
    """{stage: {"seconds", "work_s", "startup_s", ...}} from a round manifest's stage records."""
    out = {}
    for name, rec in stages.items():
        seconds = float(rec.get("seconds") or 0.0)
        row: dict = {"seconds": round(seconds, 2)}
        work = 0.0
        if name == "sample":
            stats = rec.get("stats") or {}
            work = float(stats.get("generate_seconds") or 0.0)
            row["pool_and_handover_s"] = round(seconds - work, 2)
        elif name == "train":
            m = rec.get("metrics") or {}
            work = float(m.get("train_seconds") or 0.0)
            setup = float(m.get("setup_seconds") or 0.0) + float(m.get("import_seconds") or 0.0)
            row["worker_setup_s"] = round(setup, 2)  # imports, data, model load, deepspeed.initialize
            parts = {"worker_group_start_s": m.get("worker_group_seconds"),  # Ray Train's actors, up to the loop
                     "final_checkpoint_s": m.get("final_report_seconds"),  # save, export, Ray Train's wind-down
                     "publish_s": m.get("publish_seconds")}  # the export published into the run directory
            row.update({k: round(float(v), 2) for k, v in parts.items() if v is not None})
            # what is left: the driver's side (Ray, the data's fingerprint) and the checkpoints reported on the way
            row["other_s"] = round(seconds - work - setup - sum(float(v or 0.0) for v in parts.values()), 2)
            row["steps"] = m.get("steps")
        elif name == "eval":
            s = rec.get("sampling") or {}
            work = float(s.get("generate_seconds") or 0.0)
            row["pool_and_handover_s"] = round(seconds - work, 2)
        row["work_s"] = round(work, 2)
        row["startup_s"] = round(seconds - work, 2)
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller round (smoke run)")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--keep", help="build the run here and keep it (default: a temporary directory)")
    args = p.parse_args(argv)

    from r3v_ray.config import load_config
    from r3v_ray.pipeline.round import run_round
    from r3v_ray.run.store import read_json

    work_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="r3v-bench-round-"))
    overrides = [f"storage.root={work_dir / 'runs'}", f"model.path={work_dir / 'tiny-model'}",
                 f"task.data_dir={work_dir / 'synthetic-data'}", "name=bench-round", "rounds=1"]
    if args.quick:
        overrides += ["task.num_train=40", "task.num_test=20", "reflect.warmup_cot=20", "training.epochs=1"]
    cfg = load_config(args.config, overrides)
    try:
        t0 = time.perf_counter()
        run_round(cfg, 0)  # round 0 (untimed): M0 for round 1 to sample from; Ray starts here
        round0_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = run_round(cfg, 1)
        wall = time.perf_counter() - t0
        manifest = read_json(str(work_dir / "runs" / "bench-round" / "round-001" / "manifest.json"))
    finally:
        import ray

        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    stages = stage_split(manifest["stages"])
    in_stages = sum(s["seconds"] for s in stages.values())
    stages["driver"] = {"seconds": round(wall - in_stages, 2), "work_s": 0.0, "startup_s": round(wall - in_stages, 2)}
    work = sum(s["work_s"] for s in stages.values())
    for name, s in stages.items():
        parts = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("seconds", "work_s", "startup_s"))
        print(f"{name:7s} {s['seconds']:7.2f} s: work {s['work_s']:6.2f} s, start-up/hand-over {s['startup_s']:6.2f} s"
              + (f" ({parts})" if parts else ""))
    out = {
        "benchmark": "round",
        "overhead_s": round(wall - work, 2),
        "work_s": round(work, 2),
        "wall_s": round(wall, 2),
        "stages": stages,
        "round0_s": round(round0_s, 2),
        "eval": {k: v for k, v in metrics.items() if "@" in k},
        "quick": args.quick,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
