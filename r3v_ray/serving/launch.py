"""Starting the app from a command line: shared by `r3v serve` and `jobs/serve.py` (`ray job submit`)."""

from __future__ import annotations

import argparse
import logging
import signal
import time

from r3v_ray.cluster.connect import ADDRESS_HELP

log = logging.getLogger(__name__)


def add_serve_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_argument_group("what to serve (a checkpoint, or a run directory and round)")
    src.add_argument("--checkpoint", help="a model directory (e.g. runs/demo/round-002/checkpoint)")
    src.add_argument("--run-dir", help="a run directory; serves round-<K>/checkpoint (newest round by default)")
    src.add_argument("--round", type=int, help="the round to serve from --run-dir")
    p.add_argument("--task", help="task whose prompt and answer extractor are used (default: the config's)")
    p.add_argument("--config", help="run config YAML (default: <run-dir>/config.yaml if present, else defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. serve.max_n=4")
    p.add_argument("--host", help="HTTP host (default serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default serve.port)")
    p.add_argument("--address", help=ADDRESS_HELP + " (default: RAY_ADDRESS, or a new local Ray)")
    return p


def start(args: argparse.Namespace) -> tuple[str, str]:
    """Deploy the app on Ray Serve; returns (base URL, model id). Serve keeps running after this returns."""
    from ray import serve

    from r3v_ray.cluster.connect import ensure_ray
    from r3v_ray.serving.app import build_app, model_info, prepare

    overrides = list(args.set)
    if args.host:
        overrides.append(f"serve.host={args.host}")
    if args.port:
        overrides.append(f"serve.port={args.port}")
    cfg, served = prepare(args.checkpoint, args.run_dir, args.round, args.task, args.config, overrides)
    app = build_app(cfg, served)
    ensure_ray(args.address, log_to_driver=False)  # --address, else RAY_ADDRESS, else a fresh local Ray
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
    return url, model_info(cfg, served)["id"]


def serve_forever(args: argparse.Namespace) -> int:
    """`r3v serve`: deploy, print where, and keep serving until Ctrl-C or SIGTERM, then shut Serve down."""
    from ray import serve

    url, model_id = start(args)
    # Ctrl-C or `kill` (SIGTERM) both end in serve.shutdown(); a background shell would otherwise ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"serving {model_id} at {url}  (POST /v1/select, POST /v1/chat/completions with model={model_id!r} or "
          f"'r3v', GET /v1/models, GET /healthz)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
