"""`make bench`: every benchmark under benchmarks/, one after another, then one JSON summary line.

Each script runs with --quick where it has that flag (unless --full), and extra runs listed in EXTRA where the
script offers their flags. A script's last stdout line is its JSON result; a script that fails, times out or prints
no JSON is reported as such in the summary (the others still run). Its own output goes to stderr as it runs.

    .venv/bin/python benchmarks/run_all.py [--full] [--only training serve ...] [--timeout 900]

Last line: {"benchmark": "all", "quick": ..., "seconds": ..., "results": {"training": {...}, ...}, "failed": [...]}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Further runs of a script, made only where its --help lists the flag: {script stem: [extra argument lists]}.
EXTRA = {"sampling": [["--scale"]]}


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def run(script: Path, args: list[str], timeout: float) -> tuple[dict | None, str | None, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, str(script), *args]
    print(f"== {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    sys.stderr.write(proc.stdout)
    result = last_json(proc.stdout)
    if proc.returncode != 0:
        return result, f"exit status {proc.returncode}", seconds
    if result is None:
        return None, "no JSON line", seconds
    return result, None, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="without --quick (each benchmark's own defaults)")
    p.add_argument("--only", nargs="*", help="script names without .py")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per script run")
    args = p.parse_args(argv)

    started = time.perf_counter()
    results: dict[str, dict] = {}
    failed: list[dict] = []
    for script in scripts():
        name = script.stem
        if args.only and name not in args.only:
            continue
        helptext = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                  cwd=HERE.parent).stdout
        runs = [[]] + [extra for extra in EXTRA.get(name, []) if all(flag in helptext for flag in extra)]
        for extra in runs:
            quick = ["--quick"] if not args.full and "--quick" in helptext else []
            key = name + "".join(f" {a}" for a in extra)
            result, error, seconds = run(script, [*quick, *extra], args.timeout)
            entry = dict(result or {}, seconds=round(seconds, 1), quick=bool(quick))
            if error:
                entry["error"] = error
                failed.append({"benchmark": key, "error": error})
            results[key] = entry
    print(json.dumps({"benchmark": "all", "quick": not args.full, "seconds": round(time.perf_counter() - started, 1),
                      "results": results, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
