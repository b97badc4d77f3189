"""Ray job entrypoint: one self-training round (idempotent: finished stages are skipped on a re-run).

    python jobs/round.py --config configs/demo.yaml --round 1
    ray job submit --address http://HOST:8265 --working-dir . -- python jobs/round.py --config C --round K
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir of a submitted job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--force", action="store_true",
                        help="redo stages recorded under a different config, or whose outputs are missing or damaged")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("-v", "--verbose", action="store_true", help="every log line, a line per training step")
    args = parser.parse_args(argv)
    from r3v_ray import console

    console.setup(verbose=args.verbose)

    from r3v_ray.config import load_config
    from r3v_ray.rounds import run_round

    try:
        cfg = load_config(args.config, args.set)
        metrics = run_round(cfg, args.round, force=args.force)
    except Exception as exc:
        from r3v_ray.manifest import RunDirError

        if not isinstance(exc, RunDirError):  # a damaged run directory is named in the message: no traceback
            logging.getLogger("r3v.round").exception("round %s failed", args.round)
        print(f"round {args.round} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"round {args.round} finished: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()
                                                      if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
