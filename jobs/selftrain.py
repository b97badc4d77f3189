"""Ray job entrypoint / driver for the whole loop: rounds 0..K.

    python jobs/selftrain.py --config configs/demo.yaml                        # local Ray, in this process
    python jobs/selftrain.py --config C --address http://HOST:8265             # one `ray job` per round
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--address", help="Ray dashboard address (http://HOST:8265): submit each round as a job")
    parser.add_argument("--from-round", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-v", "--verbose", action="store_true", help="every log line, a line per training step")
    args = parser.parse_args(argv)
    from r3v_ray import console

    console.setup(verbose=args.verbose)

    from r3v_ray.config import load_config
    from r3v_ray.selftrain import run_local, submit_rounds

    cfg = load_config(args.config, args.set)
    try:
        if args.address:
            submit_rounds(cfg, args.config, args.address, args.set, args.from_round, args.force)
        else:
            run_local(cfg, args.from_round, args.force)
    except Exception as exc:
        from r3v_ray.manifest import RunDirError

        if not isinstance(exc, RunDirError):  # a damaged run directory is named in the message: no traceback
            logging.getLogger("r3v.selftrain").exception("self-training stopped")
        print(f"self-training stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from r3v_ray.rundir import RunDir
    from r3v_ray.store import is_uri

    report = RunDir.of(cfg).report
    print(f"done: see {report if is_uri(report) else os.path.abspath(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
