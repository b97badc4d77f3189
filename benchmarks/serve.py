"""Benchmark of the self-selection endpoint on 127.0.0.1: throughput and latency under concurrent clients,
and the overhead of the HTTP path against a direct in-process call of the same selection (the baseline).

    .venv/bin/python benchmarks/serve.py            # 16 clients for 30 s
    .venv/bin/python benchmarks/serve.py --quick    # 4 clients for 5 s

Phases: (1) overhead: one client, HTTP and direct calls interleaved on the same query and seed, so machine
load drifts hit both alike; (2) load: C clients, each posting until the time is up (bounded in count too).
Serves the tiny model unless --checkpoint is given. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for key, value in {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(key, value)

import requests  # noqa: E402

MAX_REQUESTS_PER_CLIENT = 10_000  # a bound besides the clock


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_phase(url: str, body_for, clients: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def client(cid: int) -> None:
        session = requests.Session()
        for i in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= stop_at:
                return
            t0 = time.perf_counter()
            try:
                r = session.post(url, json=body_for(cid * MAX_REQUESTS_PER_CLIENT + i), timeout=120)
                ok, why = r.status_code == 200, f"HTTP {r.status_code}"
            except requests.RequestException as exc:
                ok, why = False, type(exc).__name__
            with lock:
                (latencies.append(1000 * (time.perf_counter() - t0)) if ok else errors.append(why))

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 180)
    elapsed = time.perf_counter() - t0
    return {"ok": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)), "elapsed_s": elapsed, "latencies": latencies}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 clients for 5 s, 8 overhead pairs")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (at most 30)")
    p.add_argument("--pairs", type=int, default=20, help="HTTP/direct pairs for the overhead")
    p.add_argument("--checkpoint", help="model to serve (default: a freshly built tiny model)")
    p.add_argument("--strategy", default="self_select", choices=["self_select", "majority", "first"])
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, help="default: serve.max_batch_size")
    p.add_argument("--batch-wait", type=float, help="seconds; default: serve.batch_wait_timeout_s")
    p.add_argument("--replicas", type=int, help="sampler replicas (default: serve.num_replicas); each takes 1 CPU")
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.pairs = 4, 5.0, 8
    args.duration = min(args.duration, 30.0)

    import ray
    import torch
    from ray import serve

    from r3v_ray.run.cache import localize
    from r3v_ray.config import config_from_dict
    from r3v_ray.engines import create_engine
    from r3v_ray.cluster.connect import start_local
    from r3v_ray.serving import checkpoint as ckpt
    from r3v_ray.serving.app import build_app, model_info
    from r3v_ray.serving.parsing import parse_select
    from r3v_ray.serving.selector import select_in_process
    from r3v_ray.tasks import get_task

    tmp = tempfile.TemporaryDirectory(prefix="r3v-bench-serve-")
    checkpoint = args.checkpoint
    if not checkpoint:
        from r3v_ray.models.tiny import build_tiny_model
        from r3v_ray.pipeline.prepare import tokenizer_corpus

        checkpoint = str(build_tiny_model(Path(tmp.name) / "tiny", corpus=tokenizer_corpus()))
    port = free_port()
    serve_cfg = {"port": port, "max_new_tokens": args.max_new_tokens, "max_n": max(8, args.n), "app_name": "r3v-bench"}
    if args.max_batch_size:
        serve_cfg["max_batch_size"] = args.max_batch_size
    if args.replicas:
        serve_cfg["num_replicas"] = args.replicas
    if args.batch_wait is not None:
        serve_cfg["batch_wait_timeout_s"] = args.batch_wait
    cfg = config_from_dict({"serve": serve_cfg, "evaluation": {"select_max_new_tokens": 8}})
    task = get_task(cfg.task.name)
    record = next(task.generate_records("test", 1, 0))
    buf = io.BytesIO()
    task.render(record).save(buf, format="PNG")
    image_b64 = base64.b64encode(buf.getvalue()).decode()

    def body(seed: int) -> dict:
        return {"question": record.question, "image": image_b64, "choices": record.choices, "n": args.n,
                "strategy": args.strategy, "sampling": {"seed": seed}}

    served = ckpt.resolve(checkpoint=checkpoint)
    url = f"http://127.0.0.1:{port}/v1/select"
    start_local(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg, served), name=cfg.serve.app_name, route_prefix="/")
        for seed in range(3):  # warm-up: first calls pay lazy initialisation
            requests.post(url, json=body(seed), timeout=120).raise_for_status()

        # (1) overhead: same query and seed over HTTP and directly, interleaved. The direct call runs in a Ray
        # worker process too: Ray starts its workers at nice 15, and a baseline in this driver (nice 0) would get a
        # larger share of a busy machine than the replicas and inflate the overhead.
        @ray.remote(num_cpus=0)
        class Direct:
            def __init__(self):
                torch.set_num_threads(cfg.serve.torch_threads)  # as in the replica
                self.engine = create_engine("hf", localize(checkpoint, cfg.storage), torch_threads=cfg.serve.torch_threads)

            def select_ms(self, query) -> float:
                t0 = time.perf_counter()
                select_in_process(self.engine, task, query)
                return 1000 * (time.perf_counter() - t0)

        direct = Direct.remote()
        query = parse_select(body(0), cfg.serve, cfg.evaluation.select_budget)
        ray.get(direct.select_ms.remote(query))
        http_ms, direct_ms, ingress_ms = [], [], []
        session = requests.Session()
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            r = session.post(url, json=body(0), timeout=120)
            http_ms.append(1000 * (time.perf_counter() - t0))
            r.raise_for_status()
            ingress_ms.append(r.json()["timings_ms"]["ingress_ms"])  # the selection as the ingress waited for it
            direct_ms.append(ray.get(direct.select_ms.remote(query)))
        ray.kill(direct)

        # (2) load
        sampler = serve.get_deployment_handle("R3VSampler", cfg.serve.app_name)
        before = sampler.info.remote().result()
        load = load_phase(url, body, args.clients, args.duration)
        after = sampler.info.remote().result()
        batches = after["batches"] - before["batches"]
        mean_batch = (after["items"] - before["items"]) / batches if batches else 0.0
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()

    lat = load["latencies"]
    result = {
        "benchmark": "serve",
        "rps": round(load["ok"] / load["elapsed_s"], 3),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "errors": load["errors"],
        "requests": load["ok"] + load["errors"],
        "error_kinds": load["error_kinds"],
        "clients": args.clients,
        "duration_s": round(load["elapsed_s"], 2),
        "http_p50_ms": round(statistics.median(http_ms), 2),
        "direct_p50_ms": round(statistics.median(direct_ms), 2),
        "overhead_p50_ms": round(statistics.median(http_ms) - statistics.median(direct_ms), 2),
        # the overhead split: the sampler call from the ingress (the deployment handle's hop, the replica's queue)
        # and the rest (HTTP proxy, reading and validating the body, shaping the answer)
        "handle_overhead_p50_ms": round(statistics.median(ingress_ms) - statistics.median(direct_ms), 2),
        "sequential_rps_direct": round(1000 / statistics.median(direct_ms), 3),
        "strategy": args.strategy,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "replicas": cfg.serve.num_replicas,
        "max_batch_size": cfg.serve.max_batch_size,
        "batch_wait_s": cfg.serve.batch_wait_timeout_s,
        "mean_engine_batch": round(mean_batch, 2),  # engine calls per load phase: requests per call
        "model": model_info(cfg, served)["id"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
