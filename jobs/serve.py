"""Ray job entrypoint: deploy the best-of-N self-selection app on the cluster's Ray Serve.

    ray job submit --address http://HOST:8265 --working-dir . -- \
        python jobs/serve.py --run-dir "$PWD/runs/demo" --round 2 --set serve.host=0.0.0.0

The Serve application outlives the job (Serve runs detached); `--wait` keeps the job alive until the app is
deleted or the job is stopped. Bind 0.0.0.0 only on a cluster whose network you control, and with API keys:
R3V_SERVE_API_KEYS_FILE (in the job's runtime env) naming a keys file on the driver's node; then every route but
/healthz needs `Authorization: Bearer <key>`. (Keys given with --set show in the job's entrypoint.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir of a submitted job


def main(argv: list[str] | None = None) -> int:
    from r3v_ray.cluster import needs

    needs.check_or_exit()  # before anything imports pydantic or ray
    from r3v_ray.serving.launch import add_serve_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_args(parser)
    parser.add_argument("--wait", action="store_true", help="keep the job running while the app is up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from r3v_ray.cli import user_errors
    from r3v_ray.serving.launch import start

    try:
        url, model_id = start(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {model_id} at {url}", flush=True)
    if args.wait:
        from ray import serve

        while any(app for app in serve.status().applications):
            time.sleep(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
