"""conftest's `start_ray`, the one retry of a Ray start that timed out on a loaded machine (issue 26) or found a
port taken: what it retries, and that the first try's processes are ended first; and `free_ports`, the ports a
head is started on."""

from __future__ import annotations

import subprocess

import pytest
from conftest import RAY_PORT_TAKEN, RAY_START_TIMED_OUT, free_ports, start_ray


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
        raise RuntimeError("the head node did not come up: invalid resources")

    with pytest.raises(RuntimeError, match="invalid resources"):
        start_ray(start)
    assert tries == [1]


def test_a_start_that_found_a_port_taken_is_tried_once_more():
    tries = []

    def start() -> str:
        tries.append(1)
        if len(tries) == 1:  # what `ray start` prints when two of its components were given one port
            raise RuntimeError(f"the head node did not come up: ValueError: ... port number 45055 {RAY_PORT_TAKEN[0]}.")
        return "up"

    assert start_ray(start) == "up" and tries == [1, 1]


def test_free_ports_are_distinct_and_avoid_the_ports_given():
    first = free_ports(1)
    ports = free_ports(300, avoid=tuple(first))
    assert len(set(ports)) == 300 and first[0] not in ports
