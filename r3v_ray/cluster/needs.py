"""Whether this Python can run r3v's stages: checked first by every entrypoint, with the standard library only.

A submitted job's `python` is the first one on the PATH of the shell that ran `ray start` on the head node, not
the one of the shell that ran `ray job submit`; without r3v-ray installed there, the first import deep in a round
failed with a bare ModuleNotFoundError. This names the Python and what to do instead (docs/cluster.md).
"""

from __future__ import annotations

import importlib.util
import sys

# Import names of what the stages and the driver need (pyproject.toml's dependencies).
STAGE_MODULES = ("ray", "pydantic", "yaml", "pyarrow", "torch", "transformers", "deepspeed", "PIL")


def missing(modules: tuple[str, ...] = STAGE_MODULES) -> list[str]:
    """The modules of `modules` this Python cannot import (found without importing them)."""
    out = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def problem(modules: tuple[str, ...] = STAGE_MODULES) -> str | None:
    """One sentence naming this Python and what it lacks, or None when it has everything."""
    lacking = missing(modules)
    if not lacking:
        return None
    return (f"this Python ({sys.executable}) cannot import {', '.join(lacking)}, which r3v needs. A Ray job runs "
            "the `python` first on the PATH of the shell that ran `ray start`: install r3v-ray into that Python on "
            "every node (activate its environment before `ray start`), or name the environment's Python in the "
            "job's command (`ray job submit ... -- /path/to/venv/bin/python jobs/round.py ...`); see docs/cluster.md")


def check_or_exit(modules: tuple[str, ...] = STAGE_MODULES) -> None:
    """Exit with status 2 and the sentence when this Python lacks a module the stages need."""
    message = problem(modules)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
