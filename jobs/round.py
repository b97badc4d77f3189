"""Ray job entrypoint: one self-training round (idempotent: finished stages are skipped on a re-run); `r3v round`.

    python jobs/round.py --config configs/demo.yaml --round 1
    ray job submit --address http://HOST:8265 --working-dir . -- \
        python jobs/round.py --config configs/demo.yaml --round 1 --base-dir "$PWD"

In a submitted job the config's relative paths are refused unless --base-dir names where they are (docs/cluster.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir of a submitted job


def main(argv: list[str] | None = None) -> int:
    from r3v_ray.cli import main as r3v

    return r3v(["round", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
