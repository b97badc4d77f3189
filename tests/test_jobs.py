"""Rounds as Ray jobs: where a submitted job's data and outputs live, and the loop's submitter on a cluster that
runs other jobs too. A `ray start --head` on 127.0.0.1 owned by this module (the whole rounds as jobs are in
tests/test_selftrain.py)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import PY, ROOT, ray_head, subprocess_env

from r3v_ray.config import config_from_dict


def _job_agent_answers(ports: dict) -> None:
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(f"http://127.0.0.1:{ports['dashboard']}").submit_job(entrypoint="echo ready",
                                                                            submission_id="probe")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """(dashboard url, gcs address, env) of a head with 1 CPU (auth disabled: a test cluster on 127.0.0.1)."""
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    log = tmp_path_factory.mktemp("head") / "head.log"
    with ray_head(log, env, _job_agent_answers, "--num-cpus=1", timeout_s=180) as ports:
        yield f"http://127.0.0.1:{ports['dashboard']}", f"127.0.0.1:{ports['gcs']}", env


@pytest.mark.slow
def test_a_job_submitted_by_hand_with_a_relative_storage_root_is_refused_at_its_start(head, tmp_path):
    address, _gcs, env = head
    # As the README's first try would: the demo config (storage.root: runs) from the repository root.
    runtime_env = json.dumps({"excludes": [".venv", "runs", ".git", "__pycache__", "*.egg-info"],
                              "env_vars": {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}})
    cmd = [str(Path(PY).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--submission-id", "relative-root", "--runtime-env-json", runtime_env, "--",
           "python", "jobs/round.py", "--config", "configs/demo.yaml", "--round", "0"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "Traceback" not in log, log[-3000:]
    # Once from the job, and again in Ray's failure message, which repeats the end of the job's log.
    (line,) = {line for line in log.splitlines() if line.startswith("error: relative path(s) in a Ray job: ")}
    assert "storage.root=runs, task.data_dir=runs/synthetic-data, model.path=runs/tiny-model" in line
    assert "runtime_resources/working_dir_files" in line  # says where the job actually runs
    assert 'add --base-dir "$PWD" to the job\'s command' in line
    from ray.job_submission import JobSubmissionClient

    assert str(JobSubmissionClient(address).get_job_status("relative-root")).endswith("FAILED")


def test_selftrain_submitter_tolerates_jobs_without_a_submission_id(head):
    address, gcs, env = head
    from ray.job_submission import JobSubmissionClient

    from r3v_ray.pipeline.loop import _free_submission_id

    # A job of a plain `ray.init(address=...)` script: it is listed, with no submission id.
    plain = subprocess.run([PY, "-c", f"import ray; ray.init(address='{gcs}'); print('plain driver ran')"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    client = JobSubmissionClient(address)
    assert any(j.submission_id is None for j in client.list_jobs())
    assert _free_submission_id(client, "r3v-x-round-0") == "r3v-x-round-0"
    assert _free_submission_id(client, "probe") == "probe-attempt-2"  # an earlier attempt of the same id


def test_submitter_sends_absolute_paths_and_refuses_before_submitting(tmp_path, monkeypatch):
    from r3v_ray.pipeline.loop import _absolute_overrides, submit_rounds

    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    assert _absolute_overrides(cfg) == [f"storage.root={tmp_path}/runs", f"task.data_dir={tmp_path}/runs/synthetic-data",
                                        f"model.path={tmp_path}/runs/tiny-model"]
    # `make demo`'s data under runs/, and a config that asks for other data there: refused here, before a job
    # is submitted (the address is never contacted).
    from r3v_ray.pipeline.prepare import ensure_data

    ensure_data(config_from_dict({"task": {"num_train": 3, "num_test": 2}}))
    with pytest.raises(ValueError, match=r"runs/synthetic-data was built with .*remove the directory"):
        submit_rounds(cfg, "configs/demo.yaml", "http://127.0.0.1:9", [])
    assert os.path.isdir(tmp_path / "runs" / "synthetic-data")


@pytest.mark.slow  # starts a head node
def test_every_address_form_leads_to_the_same_cluster(head):
    """The dashboard URL and the GCS address are one cluster's: each is turned into the other."""
    from r3v_ray.cluster.connect import AddressError, cluster_address

    url, gcs, _env = head
    assert cluster_address(gcs, "dashboard") == url and cluster_address(url + "/", "dashboard") == url
    assert cluster_address(url, "gcs") == gcs and cluster_address(gcs, "gcs") == gcs
    with pytest.raises(AddressError, match="no Ray dashboard answers there"):
        cluster_address("http://127.0.0.1:9", "gcs")


PROBE = """
import ray
{connect}

@ray.remote(num_cpus=0)
def state_api_in_a_worker():
    from ray.util.state import list_nodes  # what Ray Train's helper actors ask (is the controller alive?)
    try:
        return f"nodes: {{len(list_nodes())}}"
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"

print("worker:", ray.get(state_api_in_a_worker.remote()))
"""


@pytest.mark.slow  # two head nodes and a submitted job: about a minute each
@pytest.mark.parametrize("driver", ["plain ray.init()", "r3v's ensure_ray"])
def test_a_jobs_workers_reach_the_state_api_of_their_own_cluster_beside_another(head, tmp_path, driver):
    """With a second Ray cluster on the machine, a worker of a submitted job that asks Ray's state API without an
    address fails ("Found multiple active Ray instances": what Ray Train's placement-group cleaner and state actor
    printed); an r3v driver sends the dashboard's address in its job's runtime env, and the worker gets its answer."""
    from ray.job_submission import JobSubmissionClient

    address, _gcs, env = head
    connect = "ray.init()" if driver.startswith("plain") else "from r3v_ray.cluster.connect import ensure_ray; ensure_ray()"
    with ray_head(tmp_path / "other.log", subprocess_env(RAY_AUTH_MODE="disabled"), _job_agent_answers, "--num-cpus=0"):
        client = JobSubmissionClient(address)
        job = client.submit_job(entrypoint=f"python -c {shlex.quote(PROBE.format(connect=connect))}",
                                runtime_env={"working_dir": str(ROOT), "excludes": [".git", "docs"]})
        deadline = time.time() + 300
        while not str(client.get_job_status(job)).split(".")[-1] in {"SUCCEEDED", "FAILED", "STOPPED"}:
            assert time.time() < deadline, client.get_job_logs(job)[-3000:]
            time.sleep(2)
        logs = client.get_job_logs(job)
    lines = [line for line in logs.splitlines() if line.startswith("worker:")]
    assert len(lines) == 1, logs[-3000:]
    line = lines[0]
    if driver.startswith("plain"):
        assert "Found multiple active Ray instances" in line, logs[-3000:]
    else:
        assert line == "worker: nodes: 1", logs[-3000:]
