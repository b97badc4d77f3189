"""What the entrypoints (`r3v`, jobs/round.py, jobs/selftrain.py, jobs/serve.py) print for a user's mistake: one
`error: ...` line and exit status 2, never a traceback; a Python without r3v's dependencies is named before anything
imports them; a config's relative paths in a submitted job are resolved against --base-dir or refused in one line.
Real processes, no Ray started (each error comes before it)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess

import pytest
from conftest import PY, ROOT, subprocess_env

from r3v_ray.config import ConfigError, load_config

ENTRYPOINTS = {
    "jobs/round.py": [str(ROOT / "jobs" / "round.py"), "--round", "0"],
    "jobs/selftrain.py": [str(ROOT / "jobs" / "selftrain.py")],
    "r3v round": ["-m", "r3v_ray.cli", "round", "--round", "0"],
    "r3v run": ["-m", "r3v_ray.cli", "run"],
}


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line a process printed last, exit status 2 (r3v's log lines may come before it; only a
    config's list of invalid fields may follow it, indented, one field a line)."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    (start,) = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    line, *fields = lines[start:]
    assert all(f.startswith("  ") for f in fields), done.stderr
    return "\n".join([line, *fields])


def _run(args: list[str], *python_flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *python_flags, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name", [*ENTRYPOINTS, "jobs/serve.py"])
def test_a_python_without_r3vs_dependencies_is_named_with_what_to_do(name):
    # -S: this very Python without its site-packages, as a `python` on the PATH of another environment would be.
    args = ENTRYPOINTS.get(name, [str(ROOT / "jobs" / "serve.py"), "--run-dir", "runs/x"])
    line = _one_error_line(_run([*args, "--config", "configs/demo.yaml"], "-S"))
    assert f"this Python ({PY}) cannot import ray, pydantic, yaml, pyarrow, torch, transformers" in line
    assert "ray start" in line and "/path/to/venv/bin/python jobs/round.py" in line


@pytest.mark.parametrize("name", ENTRYPOINTS)
def test_an_invalid_config_is_one_line(name):
    line = _one_error_line(_run([*ENTRYPOINTS[name], "--config", "configs/demo.yaml", "--set", "training.nope=1"]))
    assert "training.nope" in line


def _run_dir_under_another_config(tmp_path, with_config_yaml: bool) -> list[str]:
    """A run directory whose round 0 has a finished stage recorded under another learning rate; returns the --set
    overrides of the demo config that address it."""
    from r3v_ray.run.manifest import Manifest
    from r3v_ray.run.layout import RunDir

    sets = [f"storage.root={tmp_path}", "training.lr=0.5"]
    old = load_config(ROOT / "configs" / "demo.yaml", sets[:1])
    manifest = Manifest.open(RunDir.of(old).round(0).manifest_uri, old.digest(), 0)
    manifest.record("build", 1.0)
    if with_config_yaml:
        (tmp_path / "demo" / "config.yaml").write_text(old.to_yaml())
    return sets


def test_a_manifest_written_under_another_config_is_one_line(tmp_path):
    sets = _run_dir_under_another_config(tmp_path, with_config_yaml=False)
    line = _one_error_line(_run([*ENTRYPOINTS["jobs/round.py"], "--config", "configs/demo.yaml",
                                 *[a for s in sets for a in ("--set", s)]]))
    assert "manifest.json was written under config" in line and "--force" in line


def test_a_run_directory_holding_a_different_config_is_one_line(tmp_path):
    sets = _run_dir_under_another_config(tmp_path, with_config_yaml=True)
    line = _one_error_line(_run([*ENTRYPOINTS["r3v run"], "--config", "configs/demo.yaml",
                                 *[a for s in sets for a in ("--set", s)]]))
    assert "holds a different config (changed: training.lr)" in line


def test_relative_paths_in_a_submitted_job_are_refused_in_one_line_naming_each_and_the_fix(monkeypatch):
    from r3v_ray.cluster.preflight import check_job_paths

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))  # as in a job's driver
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    with pytest.raises(ConfigError) as err:
        check_job_paths(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "storage.root=runs, task.data_dir=runs/synthetic-data, model.path=runs/tiny-model" in message
    assert 'add --base-dir "$PWD" to the job\'s command' in message


def test_base_dir_resolves_the_configs_relative_paths_and_says_so(tmp_path, monkeypatch, caplog):
    from r3v_ray.cli import _load
    from r3v_ray.cluster.preflight import check_job_paths

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))
    args = argparse.Namespace(config=str(ROOT / "configs" / "demo.yaml"), set=["rounds=1"], base_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="r3v"):
        cfg, sets = _load(args)
    assert (cfg.storage.root, cfg.task.data_dir, cfg.model.path, cfg.rounds) == (
        str(tmp_path / "runs"), str(tmp_path / "runs" / "synthetic-data"), str(tmp_path / "runs" / "tiny-model"), 1)
    assert f"relative paths resolved against --base-dir {tmp_path}: storage.root={tmp_path}/runs" in caplog.text
    assert sets[0] == "rounds=1" and len(sets) == 4
    check_job_paths(cfg)  # nothing relative is left

