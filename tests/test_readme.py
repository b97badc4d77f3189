"""The README as a user reads it: its commands exist as written, its links resolve, and it stays a landing page."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.split("#")[0].strip() for line in joined.splitlines() if line.split("#")[0].strip()]
    return lines


def _r3v_commands() -> list[list[str]]:
    """Each `r3v SUBCOMMAND [SUBSUBCOMMAND]` the README runs, without its arguments."""
    out = []
    for line in _code_lines():
        words = shlex.split(line)
        if words and words[0].endswith("r3v"):
            command = [words[1]] + ([words[2]] if len(words) > 2 and not words[2].startswith("-")
                                    and words[1] == "data" else [])
            if command not in out:
                out.append(command)
    return out


def test_the_readme_is_a_landing_page():
    assert len(README) <= 12_000
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "no dates in the README: history goes to docs/changelog.md"


def test_every_link_in_the_readme_resolves():
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", README):
        assert (ROOT / target).is_file(), target


@pytest.mark.parametrize("command", _r3v_commands(), ids=" ".join)
def test_every_r3v_command_in_the_readme_exists(command):
    done = subprocess.run([sys.executable, "-m", "r3v_ray.cli", *command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_readme_names_the_make_targets_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z][a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefile, re.M), target
