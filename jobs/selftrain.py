"""Ray job entrypoint / driver for the whole loop, rounds 0..K: `r3v run`.

    python jobs/selftrain.py --config configs/demo.yaml                        # local Ray, in this process
    python jobs/selftrain.py --config C --address http://HOST:8265             # one `ray job` per round
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from r3v_ray.cli import main as r3v

    return r3v(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
