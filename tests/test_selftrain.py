"""End-to-end: the self-training loop on a tiny configuration, its crash/resume, and a round as a Ray job.

These are the slowest tests of the suite (whole rounds: sampling, DeepSpeed training, evaluation): one killed and
resumed run (the module's `resumed` fixture) serves the tests that each read one promise off it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import PY, ROOT, ray_head, run_in_terminal, subprocess_env, tensorboard_scalars, terminal_lines


pytestmark = pytest.mark.slow


def tiny_config(path: Path, tiny_model_dir: str, data_dir: str, runs: Path, name: str, rounds: int) -> Path:
    cfg = {
        "name": name,
        "rounds": rounds,
        "model": {"path": tiny_model_dir},
        "task": {"name": "synthetic", "data_dir": data_dir, "max_train": 12, "max_test": 6},
        "sampling": {"num_samples": 2, "max_new_tokens": 24, "batch_size": 6},
        "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
        "evaluation": {"n": 2, "max_new_tokens": 24},
        "resources": {"num_samplers": 2, "num_train_workers": 2},
        "storage": {"root": str(runs)},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _manifest(run: Path, k: int) -> dict:
    path = run / f"round-{k:03d}" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_model_dir, synthetic_data_dir):
    """A two-round loop killed during round 1's training, `r3v status` on it, then re-run as a user starts it (`make
    demo` runs the same command) on a terminal of 120 columns. The tests below each read one promise off it."""
    tmp = tmp_path_factory.mktemp("resumed")
    config = tiny_config(tmp / "c.yaml", tiny_model_dir, synthetic_data_dir, tmp / "runs", "t", rounds=2)
    run = tmp / "runs" / "t"
    cmd = [PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)]
    log = open(tmp / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        # Kill once round 1's training is recorded as under way (its samples and data are then written).
        while _manifest(run, 1).get("stages", {}).get("train", {}).get("status") != "running":
            assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "round 1 never reached training"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole driver process group: our Ray included
        proc.wait()
        log.close()
    samples = run / "round-001" / "samples.parquet"
    killed = {"pid": proc.pid, "stages": _manifest(run, 1)["stages"], "status": _status(run),
              "samples": (samples.read_bytes(), samples.stat().st_mtime_ns)}
    code, raw = run_in_terminal([PY, "-m", "r3v_ray.cli", "run", "--config", str(config)], subprocess_env(),
                                timeout_s=1200, cols=120)
    lines = terminal_lines(raw, cols=120)
    assert code == 0, "\n".join(lines[-60:])
    print(f"{len(lines)} lines on the terminal:\n" + "\n".join(lines))
    return {"run": run, "cmd": cmd, "killed": killed, "out": raw.decode(errors="replace"), "lines": lines}


def test_a_killed_driver_leaves_its_training_recorded_as_running(resumed):
    stages = resumed["killed"]["stages"]
    assert stages["train"]["status"] == "running" and stages["train"]["pid"] == resumed["killed"]["pid"]


def test_status_names_the_interrupted_stage_and_what_a_re_run_does(resumed):
    half, pid = resumed["killed"]["status"], resumed["killed"]["pid"]
    assert "round 0: finished" in half and "round 2: not started" in half, half
    assert "round 1: interrupted: sample done" in half and f"train interrupted (pid {pid} on" in half, half
    assert "next: a re-run resumes round 1 at stage train" in half, half


def test_the_re_run_resumes_at_training_and_leaves_the_samples_untouched(resumed):
    out, run = resumed["out"], resumed["run"]
    assert "round 0 already finished under this config, skipped" in out
    assert "round 1] stage sample: already done" in out and "round 1] stage build: already done" in out
    assert "round 1] stage train: starting" in out
    samples = run / "round-001" / "samples.parquet"
    assert (samples.read_bytes(), samples.stat().st_mtime_ns) == resumed["killed"]["samples"]
    assert _manifest(run, 1)["stages"]["sample"] == resumed["killed"]["stages"]["sample"]


def test_the_terminal_shows_a_bar_per_training_and_the_table_last_without_ray_chatter(resumed):
    lines = resumed["lines"]
    # Ray Train's controller prints "Failed to send resource request ... safe to ignore ... CPU being overloaded"
    # with a traceback when the machine is overloaded (seen at load 20+); that notice is Ray's own, not r3v's.
    overloaded = {line.split(")")[0] for line in lines if "Failed to send resource request" in line}
    lines = [line for line in lines if not (overloaded and line.split(")")[0] in overloaded)]
    assert len(lines) <= 100, "\n".join(lines)  # rounds 1 and 2 of three
    assert not [line for line in lines if " step " in line and "/" in line and "loss" in line and "|" not in line]
    assert not [line for line in lines if "Reporting training result" in line or "Traceback" in line]
    assert any("round 2 loss" in line and "100%" in line for line in lines), "no finished bar for round 2"
    table = [line for line in lines if line.startswith("|")]
    assert lines[-len(table):] == table, lines[-8:]  # the results table comes last, in one piece
    assert table[0].startswith("| run | round |")
    assert [row.split("|")[1:3] for row in table[2:]] == [[" t (r3v) ", f" {k} "] for k in range(3)], table


def test_every_file_of_the_run_directory_layout_is_written(resumed):
    run = resumed["run"]  # docs/run-directory.md
    assert (run / "config.yaml").is_file() and (run / "report.md").is_file()
    for k in range(3):
        rd = run / f"round-{k:03d}"
        assert (rd / "checkpoint" / "config.json").is_file() and (rd / "eval.json").is_file()
        assert set(_manifest(run, k)["stages"]) >= {"build", "train", "eval"}
        if k:
            assert (rd / "samples.parquet").is_file() and (rd / "train.parquet").is_file()
    ev0 = json.loads((run / "round-000" / "eval.json").read_text())
    ev2 = json.loads((run / "round-002" / "eval.json").read_text())
    assert {"zero-shot", "test@1", "oracle@2", "majority@2", "select@2"} <= set(ev0)
    assert {"test@1", "oracle@2", "majority@2", "select@2"} <= set(ev2) and ev2["num_questions"] == 6
    assert "next: nothing: rounds 0..2 are finished" in _status(run)


def test_the_report_holds_the_manifests_numbers_and_its_plots(resumed):
    run = resumed["run"]
    report = (run / "report.md").read_text()
    assert all(f"| {k} |" in report for k in range(3))
    for k in (1, 2):
        stages = _manifest(run, k)["stages"]
        sample, build = stages["sample"]["stats"], stages["build"]["stats"]
        share = f"{100 * sample['num_correct'] / sample['num_samples']:.1f} %"
        assert (f"| {k} | {sample['num_rows']} | {build['questions_no_positive']} | {build['questions_some_positive']}"
                f" | {build['questions_all_positive']} | {sample['num_samples']} | {sample['num_correct']} | {share} |"
                in report), k
        counts = [build["examples"].get(t, 0) for t in ("warmup", "sft", "refine", "select")]
        assert f"| {k} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |" in report, k
        train = stages["train"]["metrics"]
        assert f"| {train['final_loss']:.4f} | {train['mean_loss']:.4f} | {train['final_loss_sft']:.4f} |" in report
    for png in ("accuracy.png", "loss.png", "samples.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG" and png in report


def test_tensorboard_has_every_training_step_and_every_round(resumed):
    run = resumed["run"]
    for k in (1, 2):
        train = _manifest(run, k)["stages"]["train"]["metrics"]
        steps = tensorboard_scalars(run / "tensorboard" / f"train-round-{k:03d}")
        assert [s for s, _ in steps["train/loss"]] == list(range(1, train["steps"] + 1))
        assert steps["train/loss"][-1][1] == pytest.approx(train["final_loss"], rel=1e-5)
        assert {"train/loss_sft", "train/loss_refine", "train/loss_select", "train/lr"} <= set(steps)
    per_round = tensorboard_scalars(run / "tensorboard" / "rounds")
    assert per_round["eval/test@1"] == [(k, pytest.approx(json.loads((run / f"round-{k:03d}" / "eval.json")
                                                                      .read_text())["test@1"])) for k in range(3)]
    assert {"sample/share_correct", "data/sft", "data/warmup", "loss/final_loss", "time/train_seconds"} <= set(per_round)


def test_a_changed_config_is_refused_naming_the_key(resumed):
    changed = subprocess.run(resumed["cmd"] + ["--set", "training.lr=0.5"], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "--force" in changed.stderr and "changed: training.lr" in changed.stderr


def _status(run: Path) -> str:
    done = subprocess.run([PY, "-m", "r3v_ray.cli", "status", str(run)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _job_agent_answers(ports: dict) -> None:
    """Ready means a job can be submitted: the dashboard answers before the node's job agent does."""
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(f"http://127.0.0.1:{ports['dashboard']}").submit_job(entrypoint="echo ready",
                                                                            submission_id="probe")


@pytest.fixture
def head_node(tmp_path):
    """A `ray start --head` cluster on 127.0.0.1 owned by this test: (dashboard url, metrics port, env, gcs port)."""
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    with ray_head(tmp_path / "head.log", env, _job_agent_answers, "--num-cpus=2", timeout_s=120) as ports:
        yield f"http://127.0.0.1:{ports['dashboard']}", ports["metrics"], env, ports["gcs"]


def test_round_submitted_with_ray_job_submit_and_metrics_exported(tmp_path, head_node, tiny_model_dir,
                                                                   synthetic_data_dir):
    address, _metrics_port, env, _gcs = head_node
    config = tiny_config(tmp_path / "c.yaml", tiny_model_dir, synthetic_data_dir, tmp_path / "runs", "job", rounds=0)
    # The loop's own submitter: one job per round, named r3v-<run>-round-<k>, tagged, logs streamed here.
    loop = subprocess.run([PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config), "--address", address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert loop.returncode == 0, loop.stdout[-4000:] + loop.stderr[-3000:]
    assert "round 0 finished" in loop.stdout  # streamed from the job's driver
    assert json.loads((tmp_path / "runs" / "job" / "round-000" / "eval.json").read_text())["num_questions"] == 6

    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(address).get_job_info("r3v-job-round-0")
    # job_name: what the dashboard's Jobs view shows in its Name column
    assert info.metadata == {"job_name": "r3v job round 0", "r3v_run": "job", "r3v_round": "0", "r3v_method": "r3v"}
    assert str(info.status).endswith("SUCCEEDED")
    # Each stage's record names the job that made it (`r3v status` shows it while a stage runs).
    stages = _manifest(tmp_path / "runs" / "job", 0)["stages"]
    assert {s["ray_job"] for s in stages.values()} == {"r3v-job-round-0"}
    # The dashboard's Train view lists the round's training (Ray Train's state tracking is on).
    runs = json.loads(urllib.request.urlopen(f"{address}/api/train/v2/runs/v1", timeout=30).read())["train_runs"]
    assert [(r["status"], r["job_id"]) for r in runs] == [("FINISHED", stages["train"]["ray_job_id"])], runs

    # By hand, as the README shows: `ray job submit -- python jobs/round.py ...`; every stage is already done.
    runtime_env = json.dumps({"excludes": [".venv", "runs", ".git", "__pycache__", "*.egg-info"],
                              "env_vars": {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}})
    cmd = [str(Path(PY).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--submission-id", "by-hand-round-0", "--runtime-env-json", runtime_env, "--",
           "python", "jobs/round.py", "--config", str(config), "--round", "0"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "stage train: already done" in done.stdout and "round 0 finished" in done.stdout
    # The job's log names the run directory as the user finds it: the same one the loop's jobs wrote.
    assert f"run directory: {tmp_path / 'runs' / 'job'}" in done.stdout
    assert str(JobSubmissionClient(address).get_job_status("by-hand-round-0")).endswith("SUCCEEDED")


def _r3v_series(metrics_port: int) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [line for line in text.splitlines() if "r3v_" in line and not line.startswith("#")]


def test_custom_metrics_reach_the_clusters_export_endpoint_and_stay_there(head_node):
    """A driver on the cluster records through r3v's metrics actor and exits; the series appear on the node's
    Prometheus export, tagged with run and round, under the names the Grafana dashboard queries, and are still
    there a minute later (Ray drops a gauge ~20 s after it was last set: the actor sets it again)."""
    _address, metrics_port, env, gcs = head_node
    driver = (
        "import ray; from r3v_ray.observe import telemetry; "
        f"ray.init(address='127.0.0.1:{gcs}'); "
        "telemetry.report('record_sampling', 'probe', 1, 30, 12); "
        "telemetry.report('record_losses', 'probe', 1, {'loss': 0.5, 'loss_sft': 0.3}); "
        "telemetry.report('record_step_losses', 'probe', 1, {'loss': 0.75, 'loss_sft': 0.25}); "
        "telemetry.report('record_accuracy', 'probe', 1, {'test@1': 42.0})"
    )
    done = subprocess.run([PY, "-c", driver], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = time.time()
    wanted = {"ray_r3v_accuracy": " 42.0", "ray_r3v_train_loss": " 0.5", "ray_r3v_train_step_loss": " 0.75",
              "ray_r3v_samples_generated_total": " 30.0", "ray_r3v_positive_share": " 0.4"}

    def found(series: list[str]) -> dict[str, bool]:
        return {name: any(line.startswith(name + "{") and 'run="probe"' in line and 'round="1"' in line
                          and line.endswith(value) for line in series) for name, value in wanted.items()}

    deadline, ours = time.time() + 180, []
    while time.time() < deadline:
        ours = _r3v_series(metrics_port)
        if all(found(ours).values()):
            break
        time.sleep(3)
    assert all(found(ours).values()), (found(ours), ours)
    # Every series the Grafana dashboard queries is one the export has.
    dashboard = json.loads((ROOT / "deploy" / "grafana-r3v.json").read_text())
    queried = {n for p in dashboard["panels"] for t in p["targets"] for n in wanted if n + "{" in t["expr"]}
    assert queried == set(wanted), queried

    time.sleep(max(0.0, recorded + 60 - time.time()))  # a minute on, with only the actor's refresher setting them
    later = _r3v_series(metrics_port)
    assert all(found(later).values()), (found(later), later)
