"""conftest's `start_ray`, the one retry of a Ray start that timed out on a loaded machine (issue 26): what it
retries, and that the first try's processes are ended first."""

from __future__ import annotations

import subprocess

import pytest
from conftest import RAY_START_TIMED_OUT, start_ray


def test_a_start_that_timed_out_is_tried_once_more_after_its_processes_are_ended():
    tries: list[subprocess.Popen] = []

    def start() -> str:
        tries.append(subprocess.Popen(["sleep", "300"]))  # a process the try leaves running, as Ray's would be
        if len(tries) == 1:
            raise Exception(f"{RAY_START_TIMED_OUT}. This could happen because some of the raylet failed ...")
        return "up"

    assert start_ray(start) == "up"
    assert len(tries) == 2 and tries[0].poll() is not None and tries[1].poll() is None
    tries[1].terminate()
    tries[1].wait()


def test_any_other_failure_is_not_retried():
    tries = []

    def start() -> None:
        tries.append(1)
        raise RuntimeError("the head node did not come up: port in use")

    with pytest.raises(RuntimeError, match="port in use"):
        start_ray(start)
    assert tries == [1]
