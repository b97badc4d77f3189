"""Sampling throughput: the Ray Data pipeline (2 engine actors) against a sequential single-process loop.

The sequential baseline is the paper's way: one process, one batch at a time, the same hf engine, the same
questions, the same sampling parameters, with the same per-batch work as an actor (image decoding, generation,
labeling). Both rates exclude model loading: the pipeline's rate counts from the first batch start to the last
batch end over all actors (Ray Data scheduling inside that window is included, actor start-up is not; while one
actor is still starting the other's work already counts, which is conservative); the end-to-end rate of `sample`
(start-up and the parquet write included) is reported as well.

    .venv/bin/python benchmarks/sampling.py [--quick] [--questions 96] [--repeats 3] [--two-thread-baseline]

The repeats alternate sequential and pipeline runs in one process; `ratio` is the median pipeline rate over the
median sequential rate, `ratio_runs` each repeat's own ratio and `ratio_spread` their lowest and highest.

    .venv/bin/python benchmarks/sampling.py --scale [1000 10000]

samples each number of questions (short generations) in a fresh driver process and prints the driver's peak RSS
for each: the samples are written by Ray workers, so the driver should stay flat as questions grow. Last line
{"benchmark": "sampling_scale", "rss_ratio": the largest size's peak RSS over the smallest's, ...}.

With `--engine vllm` (run it with .venv-vllm/bin/python, which has both engines) it compares the pool of vLLM
actors with the pool of hf actors instead: the same questions, parameters and pool (2 actors, 1 CPU each),
alternating runs, the same rate definitions. That is vLLM's CPU build on a tiny model; it says nothing about vLLM
on a GPU, where its batching and kernels are the point.

Last line: one JSON object {"benchmark": "sampling", "ratio": pipeline/sequential (or vllm/hf), ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3v_ray.config import RunConfig  # noqa: E402
from r3v_ray.engines import GenerationRequest, create_engine  # noqa: E402
from r3v_ray.cluster.connect import start_local  # noqa: E402  (a local Ray on 127.0.0.1)
from r3v_ray.pipeline.sampling import label_outputs, params_from_config, records_to_rows, sample, seed_key  # noqa: E402
from r3v_ray.tasks import get_task, load_image  # noqa: E402


def sequential_rate(
    model_dir: str, rows: list[dict], cfg: RunConfig, params, task, torch_threads: int
) -> tuple[float, int, float]:
    """(rationales per second, rationales, CPU seconds) of one process looping over the batches."""
    engine = create_engine("hf", model_dir, torch_threads=torch_threads, max_prompt_tokens=cfg.sampling.max_prompt_tokens)
    size = cfg.sampling.batch_size
    done = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), size):
        batch = rows[i : i + size]
        requests = [
            GenerationRequest(r["prompt"], load_image(r["image"], r["question_id"]), seed_key(r["question_id"], 1))
            for r in batch
        ]
        done += sum(1 for rec in label_outputs(batch, engine.generate(requests, params), task, 1) if rec["skip_reason"] is None)
    return done / (time.perf_counter() - start), done, time.process_time() - cpu_start


def pool_rates(cfg: RunConfig, model_dir: str, rows: list[dict], params, out: str) -> dict:
    """One `sample` over the pool: rationales per second inside the batches' window and end to end."""
    stats = sample(cfg, model_dir, rows, out, params, round_index=1)
    return {"per_s": stats.num_samples / stats.generate_seconds, "e2e": stats.num_samples / stats.seconds,
            "cpu": stats.cpu_seconds / stats.num_samples, "n": stats.num_samples, "seconds": stats.seconds}


def pool_shape(stats) -> dict:
    """How evenly one pipeline pass kept its samplers busy (SamplingStats.samplers)."""
    windows = stats.samplers
    window = stats.generate_seconds
    return {
        "start_stagger_s": round(max(w["first_start"] for w in windows), 3),
        "tail_s": round(max(w["last_end"] for w in windows) - min(w["last_end"] for w in windows), 3),
        "busy_fraction": round(sum(w["busy_seconds"] for w in windows) / (window * len(windows)), 3),
        "batches": [w["batches"] for w in windows],
    }


def vllm_against_hf(args, cfg: RunConfig, model_dir: str, rows: list[dict], params, tmp: str) -> dict:
    """The pool of vLLM actors against the pool of hf actors, alternating, medians of the repeats."""
    vllm_cfg = cfg.model_copy(deep=True)
    vllm_cfg.sampling.engine = "vllm"
    vllm_cfg.sampling.cpu_kv_cache_gib = 0.5
    runs: dict[str, list[dict]] = {"hf": [], "vllm": []}
    for rep in range(args.repeats):
        for name, run_cfg in (("hf", cfg), ("vllm", vllm_cfg)):
            runs[name].append(pool_rates(run_cfg, model_dir, rows, params, f"{tmp}/{name}-{rep}.parquet"))
    if {r["n"] for r in runs["hf"] + runs["vllm"]} != {runs["hf"][0]["n"]}:
        raise RuntimeError(f"the pools wrote different numbers of rationales: {runs}")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("per_s", "e2e", "cpu", "seconds")}
           for name, rs in runs.items()}
    return {
        "benchmark": "sampling",
        "engine": "vllm",
        "ratio": round(med["vllm"]["per_s"] / med["hf"]["per_s"], 3),
        "vllm_pool_per_s": round(med["vllm"]["per_s"], 2),
        "hf_pool_per_s": round(med["hf"]["per_s"], 2),
        "ratio_end_to_end": round(med["vllm"]["e2e"] / med["hf"]["e2e"], 3),
        "vllm_pool_end_to_end_per_s": round(med["vllm"]["e2e"], 2),
        "hf_pool_end_to_end_per_s": round(med["hf"]["e2e"], 2),
        "vllm_sample_seconds": round(med["vllm"]["seconds"], 1),
        "hf_sample_seconds": round(med["hf"]["seconds"], 1),
        "vllm_cpu_ms_per_rationale": round(1000 * med["vllm"]["cpu"], 2),
        "hf_cpu_ms_per_rationale": round(1000 * med["hf"]["cpu"], 2),
        "questions": args.questions,
        "rationales": runs["hf"][0]["n"],
        "samples_per_question": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "actors": cfg.resources.num_samplers,
        "repeats": args.repeats,
        "runs": {name: [round(r["per_s"], 2) for r in rs] for name, rs in runs.items()},
        "note": "vLLM's CPU build (one process per actor, eager) against transformers on a ~0.2M-parameter model on "
        "CPU: says nothing about vLLM on a GPU. per_s: first batch start to last batch end over both actors (not "
        "actor start-up); end_to_end: the whole sample() call, vLLM's longer start-up included.",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def scale_child(args) -> None:
    """One size of --scale, in its own process: sample the first `questions` rows, print the driver's peak RSS."""
    from r3v_ray.tasks import get_task as task_of

    task = task_of("synthetic")
    cfg = _bench_config(args)
    rows = records_to_rows(list(task.read(args.data, "train"))[: args.questions], task)
    start_local(num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray

    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def watch():  # the process's high-water mark may come from imports; this is the peak while sampling
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stats = sample(cfg, args.model, rows, f"{args.out}/samples.parquet", params_from_config(cfg.sampling, seed=0),
                       round_index=1)
    finally:
        done.set()
        watcher.join()
        ray.shutdown()
    print(json.dumps({"questions": len(rows), "rationales": stats.num_samples, "peak_rss_mib": round(peak[0], 1),
                      "rss_before_sampling_mib": round(before, 1),
                      "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "seconds": round(stats.seconds, 1), "generate_seconds": round(stats.generate_seconds, 1)}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _bench_config(args) -> RunConfig:
    """The sampling settings of both modes (the ratio and --scale): 2 sampler actors of 1 CPU, 1 torch thread."""
    cfg = RunConfig()
    cfg.sampling.num_samples = args.samples
    cfg.sampling.max_new_tokens = args.max_new_tokens
    cfg.sampling.batch_size = args.batch_size
    cfg.resources.num_samplers = 2
    cfg.resources.cpus_per_sampler = 1.0
    cfg.resources.torch_threads = 1
    return cfg


def scale(args) -> dict:
    """Each size of --scale in a fresh driver (peak RSS is per process), the same model and data for all."""
    from r3v_ray.models.tiny import build_tiny_model
    from r3v_ray.pipeline.prepare import tokenizer_corpus

    sizes = sorted(args.scale or [1000, 10000])
    runs = []
    with tempfile.TemporaryDirectory(prefix="r3v-bench-scale-") as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "model", corpus=tokenizer_corpus()))
        get_task("synthetic").write_split(Path(tmp) / "data", "train", sizes[-1], seed=0)
        for size in sizes:
            out = Path(tmp) / f"out-{size}"
            cmd = [sys.executable, __file__, "--scale-child", "--questions", str(size), "--samples", str(args.samples),
                   "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                   "--model", model_dir, "--data", str(Path(tmp) / "data"), "--out", str(out)]
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=args.scale_timeout_s)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    return {
        "benchmark": "sampling_scale",
        "rss_ratio": round(runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3),
        "sizes": sizes,
        "peak_rss_mib": [r["peak_rss_mib"] for r in runs],
        "rss_before_sampling_mib": [r["rss_before_sampling_mib"] for r in runs],
        "process_peak_rss_mib": [r["process_peak_rss_mib"] for r in runs],
        "sample_seconds": [r["seconds"] for r in runs],
        "rationales": [r["rationales"] for r in runs],
        "samples_per_question": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "note": "peak_rss: the driver's resident memory, polled every 20 ms during sample(), each size in a fresh "
        "process; rss_before_sampling: after reading the questions and starting Ray; process_peak_rss: ru_maxrss "
        "(imports included). Ray's own processes (raylet, workers, object store) are not the driver.",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run: 48 questions in batches of 4, 1 repeat")
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--samples", type=int, default=3, help="rationales per question")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="alternating sequential/pipeline runs; medians reported")
    ap.add_argument(
        "--two-thread-baseline", action="store_true", help="also time the sequential loop with 2 torch threads"
    )
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="hf: the hf pool against one process; vllm: the vLLM pool against the hf pool (.venv-vllm)")
    ap.add_argument("--scale", type=int, nargs="*", default=None, metavar="QUESTIONS",
                    help="driver memory as questions grow (default sizes 1000 10000; short generations)")
    ap.add_argument("--scale-timeout-s", type=float, default=1800, help="limit per size of --scale")
    ap.add_argument("--scale-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_child:
        return scale_child(args)
    if args.scale is not None:
        # Short generations (the driver's memory is the point, not the model's speed), batches big enough that the
        # number of Ray Data blocks stays moderate.
        for name, value in (("max_new_tokens", 8), ("samples", 2), ("batch_size", 32)):
            if f"--{name.replace('_', '-')}" not in sys.argv:
                setattr(args, name, value)
        print(json.dumps(scale(args)))
        return
    if args.quick:
        # Smaller batches keep enough of them per actor for the window to mean something.
        args.questions, args.batch_size, args.repeats = 48, 4, 1

    import ray

    from r3v_ray.models.tiny import build_tiny_model

    from r3v_ray.pipeline.prepare import tokenizer_corpus

    cfg = _bench_config(args)
    task = get_task("synthetic")
    params = params_from_config(cfg.sampling, seed=0)

    with tempfile.TemporaryDirectory(prefix="r3v-bench-sampling-") as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "model", corpus=tokenizer_corpus()))
        task.write_split(Path(tmp) / "data", "train", args.questions, seed=0)
        rows = records_to_rows(list(task.read(Path(tmp) / "data", "train")), task)

        seq, seq2, pipe, e2e, seq_cpu, pipe_cpu, pool = [], [], [], [], [], [], []
        start_local(num_cpus=2, include_dashboard=False, log_to_driver=False)
        if args.engine == "vllm":
            try:
                print(json.dumps(vllm_against_hf(args, cfg, model_dir, rows, params, tmp)))
            finally:
                ray.shutdown()
            return
        try:
            for rep in range(args.repeats):
                rate, n_seq, cpu = sequential_rate(model_dir, rows, cfg, params, task, torch_threads=1)
                seq.append(rate)
                seq_cpu.append(cpu / n_seq)
                stats = sample(cfg, model_dir, rows, f"{tmp}/out-{rep}.parquet", params, round_index=1)
                pipe.append(stats.num_samples / stats.generate_seconds)
                e2e.append(stats.num_samples / stats.seconds)
                pipe_cpu.append(stats.cpu_seconds / stats.num_samples)
                pool.append(pool_shape(stats))
                if stats.num_samples != n_seq:
                    raise RuntimeError(f"pipeline wrote {stats.num_samples} rationales, sequential {n_seq}")
            if args.two_thread_baseline:  # the baseline given both cores as intra-op threads instead of one
                seq2.append(sequential_rate(model_dir, rows, cfg, params, task, torch_threads=2)[0])
        finally:
            ray.shutdown()

    pipeline_per_s, sequential_per_s = statistics.median(pipe), statistics.median(seq)
    result = {
        "benchmark": "sampling",
        "ratio": round(pipeline_per_s / sequential_per_s, 3),
        "ratio_runs": [round(p / q, 3) for p, q in zip(pipe, seq)],
        "ratio_spread": [round(min(p / q for p, q in zip(pipe, seq)), 3),
                         round(max(p / q for p, q in zip(pipe, seq)), 3)],
        "pipeline_per_s": round(pipeline_per_s, 2),
        "sequential_per_s": round(sequential_per_s, 2),
        "pipeline_end_to_end_per_s": round(statistics.median(e2e), 2),
        # CPU per rationale tells intrinsic overhead apart from contention with other work on a shared machine.
        "pipeline_cpu_ms_per_rationale": round(1000 * statistics.median(pipe_cpu), 2),
        "sequential_cpu_ms_per_rationale": round(1000 * statistics.median(seq_cpu), 2),
        "sequential_2threads_per_s": round(statistics.median(seq2), 2) if seq2 else None,
        "ratio_vs_2threads": round(pipeline_per_s / statistics.median(seq2), 3) if seq2 else None,
        "questions": args.questions,
        "rationales": stats.num_samples,
        "samples_per_question": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "actors": cfg.resources.num_samplers,
        "torch_threads_per_process": cfg.resources.torch_threads,
        "repeats": args.repeats,
        "runs": {"pipeline_per_s": [round(x, 2) for x in pipe], "sequential_per_s": [round(x, 2) for x in seq],
                 "pipeline_cpu_ms": [round(1000 * x, 2) for x in pipe_cpu],
                 "sequential_cpu_ms": [round(1000 * x, 2) for x in seq_cpu]},
        # Where a pipeline window falls short of 2x: a sampler starting late (its start-up inside the window), one
        # finishing early (the tail), or samplers idle between batches (busy_fraction below 1).
        "pool": {key: [p[key] for p in pool] for key in ("start_stagger_s", "tail_s", "busy_fraction", "batches")},
        "included": "pipeline_per_s: first batch start to last batch end over both actors (Ray Data scheduling, "
        "image decoding, generation, labeling; not actor start-up, not the write). sequential_per_s: the batch "
        "loop (decoding, generation, labeling; not model loading). end_to_end: whole sample() call. cpu_ms: process "
        "CPU time per rationale inside batches (samplers) or the loop (sequential); the Ray driver's own CPU is not in it.",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
