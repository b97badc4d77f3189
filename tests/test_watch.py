"""Watching a run, from its files: `r3v status` on a finished, a half-finished and a failed run (a local root and the
S3-compatible server), the running and failed records a stage leaves, report.md and its plots from the manifests,
TensorBoard event files (written locally and uploaded), the console's format, and the Grafana dashboard.

The run directories here are written through the code that writes real ones (RunDir, Manifest, RoundRunner's
stage wrapper, store) with the numbers a stage reports; whole runs are checked in tests/test_selftrain.py and
tests/test_storage.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, S3_BUCKET, tensorboard_scalars

from r3v_ray.observe import console, telemetry

from r3v_ray.run import store
from r3v_ray.cli import main
from r3v_ray.config import config_from_dict
from r3v_ray.observe.report import round_summaries, thin_history, write_run_report
from r3v_ray.pipeline.round import RoundRunner
from r3v_ray.run.layout import RunDir
from r3v_ray.observe.status import driver_info, format_status, run_status
from r3v_ray.observe.tensorboard import EventLog, write_rounds_log

BUCKET = S3_BUCKET


def _history(steps: int, start: float) -> list[dict]:
    return [{"step": i + 1, "loss": start - 0.1 * i, "loss_sft": start - 0.1 * i - 0.5, "loss_refine": 0.3,
             "loss_select": 0.2, "lr": 1e-3, "seconds": 0.1} for i in range(steps)]


def _train_info(steps: int, start: float, skipped: int = 0) -> dict:
    history = _history(steps, start)
    metrics = {"steps": steps, "examples": 36, "skipped_too_long": skipped, "examples_per_second": 80.0}
    for key in ("loss", "loss_sft", "loss_refine", "loss_select"):
        values = [h[key] for h in history]
        metrics[f"final_{key}"], metrics[f"mean_{key}"] = values[-1], sum(values) / len(values)
    return {"metrics": metrics, "init_from": "base", "history": thin_history(history)}


def _evaluated(run: RunDir, k: int, test1: float, skipped: list[dict] | None = None) -> dict:
    ev = {"round": k, "num_questions": 6, "n": 2, "test@1": test1, "oracle@2": test1 + 20, "majority@2": test1,
          "select@2": test1 + 5, "skipped": skipped or [], "method": "r3v"}
    store.write_json(run.round(k).eval_json, ev)
    return {"metrics": {key: v for key, v in ev.items() if "@" in key}}


def make_run(root: str, rounds: int = 2, upto: str = "finished", name: str = "w"):
    """A run directory as the round driver leaves it: round 0 finished, round 1 finished or stopped in training
    (`upto`: finished | running | interrupted | failed)."""
    cfg = config_from_dict({"name": name, "rounds": rounds, "storage": {"root": root}})
    run = RunDir.of(cfg)
    store.write_text(run.config, cfg.to_yaml())
    m0 = run.round(0).open_manifest(cfg.digest())
    m0.record("build", 1.5, stats={"examples": {"warmup": 24}})
    m0.record("train", 12.0, **_train_info(3, 7.5))
    m0.record("eval", 4.0, **_evaluated(run, 0, 20.0))
    m1 = run.round(1).open_manifest(cfg.digest())
    store.write_json(run.round(1).skipped, [{"question_id": "q7", "reason": "field 'image': cannot decode"}])
    m1.record("sample", 3.0, stats={"num_rows": 12, "num_samples": 22, "num_correct": 9, "num_skipped": 1,
                                    "skipped": 1})
    m1.record("build", 0.5, stats={"questions": 12, "questions_sampled": 11, "questions_no_positive": 4,
                                   "questions_some_positive": 5, "questions_all_positive": 2, "samples": 22,
                                   "examples": {"sft": 7, "refine": 5, "select": 5, "warmup": 24}})
    if upto == "finished":
        m1.record("train", 20.0, **_train_info(5, 6.0, skipped=2))
        m1.record("eval", 4.5, **_evaluated(run, 1, 35.0, [{"question_id": "t3", "reason": "prompt too long"}]))
    elif upto == "running":
        m1.start("train", **driver_info())  # this very process: alive
    elif upto == "interrupted":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        m1.start("train", **{**driver_info(), "pid": gone.pid})
    elif upto == "failed":
        def boom():
            # While the stage runs, its manifest says so, with who runs it.
            entry = run.round(1).manifest().stages["train"]
            assert entry["status"] == "running" and entry["pid"] == driver_info()["pid"] and entry["started_at"]
            raise RuntimeError("the trainer ran out of memory")

        with pytest.raises(RuntimeError, match="out of memory"):
            RoundRunner(cfg, 1)._stage(m1, "train", boom)
    return cfg, run


# -- r3v status ------------------------------------------------------------------------------------------------


def test_status_of_a_finished_run(tmp_path, capsys):
    cfg, run = make_run(str(tmp_path), rounds=1)
    status = run_status(run.uri)
    assert [r.state for r in status.round_status] == ["finished", "finished"]
    assert status.config_digest == cfg.digest() and status.next.startswith("nothing: rounds 0..1 are finished")
    assert main(["status", run.uri]) == 0
    text = capsys.readouterr().out
    assert f"config digest {cfg.digest()}" in text
    assert "round 0: finished: build done (1.5s), train done (12.0s), eval done (4.0s)" in text
    assert "round 1: finished: sample done (3.0s)" in text
    assert main(["status", run.uri, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in data["round_status"]] == ["finished", "finished"]


def test_status_of_a_half_finished_run_running_or_interrupted(tmp_path):
    _, run = make_run(str(tmp_path / "a"), upto="running")
    status = run_status(run.uri)
    assert [r.state for r in status.round_status] == ["finished", "running", "not started"]
    train = status.round_status[1].stages[2]
    assert (train.name, train.state, train.pid) == ("train", "running", driver_info()["pid"])
    assert "round 1 at stage train is running" in status.next
    assert "train running for" in format_status(status) and "eval not started" in format_status(status)

    _, run = make_run(str(tmp_path / "b"), upto="interrupted")
    status = run_status(run.uri)
    assert status.round_status[1].state == "interrupted"
    assert status.next.startswith("a re-run resumes round 1 at stage train (its driver, pid ")
    assert "round 2: not started" in format_status(status)


def test_a_stage_that_raises_is_recorded_failed_and_status_says_what_a_re_run_does(tmp_path, capsys):
    _, run = make_run(str(tmp_path), upto="failed")
    entry = run.round(1).manifest().stages["train"]
    assert entry["status"] == "failed" and entry["error"] == "RuntimeError: the trainer ran out of memory"
    assert not run.round(1).done("train")  # a failed stage is redone, never skipped
    assert main(["status", run.uri]) == 0
    text = capsys.readouterr().out
    assert "round 1: failed: sample done (3.0s), build done (0.5s), train failed (RuntimeError: the trainer ran " \
           "out of memory), eval not started" in text
    assert "next: a re-run retries round 1 at stage train, which failed: RuntimeError" in text


def test_status_names_stale_stages_and_what_a_re_run_redoes(tmp_path):
    # A redone round-0 training that came out different makes round 1's finished stages stale (r3v_ray/run/layout.py).
    _, run = make_run(str(tmp_path), rounds=1)
    run.invalidate_after(0, "round 0's train stage was redone")
    status = run_status(run.uri)
    assert [r.state for r in status.round_status] == ["finished", "stale"]
    assert status.next == "a re-run redoes round 1 at stage sample, which is stale: round 0's train stage was redone"
    assert "sample stale (round 0's train stage was redone)" in format_status(status)


def test_status_names_rounds_made_under_another_config_and_refuses_a_place_without_a_run(tmp_path, capsys):
    cfg, run = make_run(str(tmp_path), rounds=1)
    changed = config_from_dict({**cfg.model_dump(mode="json"), "training": {"lr": 0.5}})
    store.write_text(run.config, changed.to_yaml())
    status = run_status(run.uri)
    assert status.round_status[0].state == "finished under another config"
    assert f"made under config {cfg.digest()}" in status.next and "--force" in status.next
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "no run here (no config.yaml" in capsys.readouterr().err


def _record_samples(run: RunDir, cfg, data: bytes = b"PAR1" + b"s" * 100) -> str:
    """Round 1's sample stage recorded with a real output (its size and checksum), as a run records it."""
    round_dir = run.round(1)
    manifest = round_dir.open_manifest(cfg.digest())
    with store.recording() as written:
        store.write_bytes(round_dir.samples, data)
    manifest.record("sample", 3.0, outputs=round_dir.outputs_of("sample", written))
    return round_dir.samples


def test_status_shows_a_damaged_stage_with_its_file_sizes_always_checksums_with_verify(tmp_path, capsys):
    cfg, run = make_run(str(tmp_path), rounds=1)
    samples = _record_samples(run, cfg)
    assert [r.state for r in run_status(run.uri).round_status] == ["finished", "finished"]
    Path(samples).write_bytes(b"PAR1" + b"X" * 100)  # a flipped byte's worth: same size, other bytes
    assert run_status(run.uri).round_status[1].state == "finished"  # sizes alone cannot see it
    assert main(["status", run.uri, "--verify"]) == 0
    text = capsys.readouterr().out
    assert f"round 1: damaged: sample damaged ({samples} has changed: its sha256 is" in text
    assert "next: a re-run refuses round 1 at stage sample" in text and "--from-round 1 --force" in text
    Path(samples).write_bytes(b"replaced")  # another file: its size differs
    status = run_status(run.uri)
    sample = status.round_status[1].stages[0]
    assert (sample.state, sample.error) == ("damaged", f"{samples} is 8 bytes, but 104 were recorded")


def test_a_round_that_links_out_of_the_run_is_refused_by_status_run_and_serving(tmp_path, capsys):
    """Run b's round 1 is a link to run a's: status, a forced re-run and serving refuse it with one line, and
    nothing of run a's round changes."""
    import os

    from r3v_ray.run.layout import OutsideRunError
    from r3v_ray.serving.checkpoint import CheckpointError, resolve

    _, run_a = make_run(str(tmp_path), name="a", rounds=1)
    cfg_b, run_b = make_run(str(tmp_path), name="b", rounds=1)
    linked, target = run_b.round(1).uri, os.path.abspath(run_a.round(1).uri)
    store.delete_dir(linked)
    os.symlink(target, linked)
    before = {p: p.stat().st_mtime_ns for p in Path(target).rglob("*")}

    assert main(["status", run_b.uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {linked} resolves to {target}, outside the run directory"), err
    assert "\n" not in err
    with pytest.raises(OutsideRunError):
        RoundRunner(cfg_b, 1, force=True)  # `r3v run --from-round 1 --force` stops here, before any write
    with pytest.raises(CheckpointError, match="outside the run directory"):
        resolve(run_dir=run_b.uri, round_=1)
    assert {p: p.stat().st_mtime_ns for p in Path(target).rglob("*")} == before

    os.unlink(linked)  # a round of its own, one file of which links to run a's
    Path(linked).mkdir()
    os.symlink(os.path.join(target, "skipped.json"), os.path.join(linked, "skipped.json"))
    with pytest.raises(OutsideRunError, match="skipped.json resolves to"):
        run_status(run_b.uri)


def test_serving_refuses_a_round_made_under_another_config(tmp_path):
    from r3v_ray.serving.checkpoint import CheckpointError, resolve

    cfg, run = make_run(str(tmp_path), rounds=1)
    store.write_json(store.join(run.round(0).checkpoint, "config.json"), {})  # a model directory, as far as it goes
    assert resolve(run_dir=run.uri, round_=0).round == 0
    changed = config_from_dict({**cfg.model_dump(mode="json"), "training": {"lr": 0.5}})
    store.write_text(run.config, changed.to_yaml())
    with pytest.raises(CheckpointError, match=f"round 0 was made under config {cfg.digest()}, but the run's "
                                              f"config.yaml is {changed.digest()}"):
        resolve(run_dir=run.uri, round_=0)


# -- report.md -------------------------------------------------------------------------------------------------


def _check_report(run: RunDir, cfg) -> str:
    text = store.read_text(run.report)
    for section in ("## Accuracy on the test split (%)", "## Sample pool", "## Training data (examples per task)",
                    "## Training loss", "## Skipped records", "## Stage times (s)"):
        assert section in text, section
    assert f"| w (r3v) | 1 | 35.00 | 55.00 | 35.00 | 40.00 |" in text  # test@1, oracle@2, majority@2, select@2
    # the pool row from round 1's sample and build records: 12 questions, 4/5/2, 22 samples, 9 correct, 1 skipped
    assert "| 1 | 12 | 4 | 5 | 2 | 22 | 9 | 40.9 % | 1 |" in text
    assert "| 0 | 24 | 0 | 0 | 0 | 24 |" in text and "| 1 | 24 | 7 | 5 | 5 | 41 |" in text
    m1 = run.round(1).manifest().stages["train"]["metrics"]
    assert f"| 1 | 5 | 80.0 | {m1['final_loss']:.4f} | {m1['mean_loss']:.4f} | {m1['final_loss_sft']:.4f} |" in text
    assert "- round 1, sample: 1 questions that could not be sampled ([round-001/skipped.json]" in text
    assert "- round 1, train: 2 examples longer than training.max_seq_len" in text
    assert "- round 1, eval: 1 test questions scored wrong because they could not be sampled" in text
    assert "t3: prompt too long" in text
    assert "| 0 |  | 1.5 | 12.0 | 4.0 | 17.5 |" in text and "| 1 | 3.0 | 0.5 | 20.0 | 4.5 | 28.0 |" in text
    for png in (run.plot, run.loss_plot, run.samples_plot):
        assert store.read_bytes(png)[:4] == b"\x89PNG"
        assert Path(png).name in text
    return text


def test_report_has_every_section_and_plot_and_its_numbers_are_the_manifests(tmp_path):
    cfg, run = make_run(str(tmp_path), rounds=1)
    write_run_report(run.uri, "r3v-ray run `w`", "w (r3v)", cfg.rounds, ["intro"])
    _check_report(run, cfg)
    summaries = round_summaries(run.uri, cfg.rounds)
    assert summaries[1]["history"]["step"] == [1, 2, 3, 4, 5]


def test_report_of_a_run_stopped_in_training_shows_what_is_done(tmp_path):
    cfg, run = make_run(str(tmp_path), upto="failed")
    write_run_report(run.uri, "t", "w (r3v)", cfg.rounds, [])
    text = store.read_text(run.report)
    assert "| 1 | 12 | 4 | 5 | 2 | 22 | 9 | 40.9 % | 1 |" in text and "| 1 | 3.0 | 0.5 |  |  | 3.5 |" in text
    assert "| w (r3v) | 1 |" not in text  # round 1 is not evaluated


def test_thin_history_keeps_at_most_the_points_asked_and_the_last_step():
    thinned = thin_history(_history(1000, 9.0), points=200)
    assert len(thinned["step"]) == 200 and thinned["step"][0] == 5 and thinned["step"][-1] == 1000
    assert set(thinned) == {"step", "loss", "loss_sft", "loss_refine", "loss_select", "lr"}
    assert thin_history(_history(7, 1.0))["step"] == list(range(1, 8)) and thin_history([]) == {}


# -- TensorBoard -------------------------------------------------------------------------------------------------


def test_event_files_hold_the_per_round_tags_and_a_resumed_writer_purges_the_failed_attempt(tmp_path):
    cfg, run = make_run(str(tmp_path), rounds=1)
    write_rounds_log(run.tensorboard_rounds, round_summaries(run.uri, cfg.rounds))
    write_rounds_log(run.tensorboard_rounds, round_summaries(run.uri, cfg.rounds))  # rebuilt, not appended
    scalars = tensorboard_scalars(tmp_path / "w" / "tensorboard" / "rounds")
    assert scalars["eval/test@1"] == [(0, 20.0), (1, 35.0)] and scalars["data/refine"] == [(1, 5.0)]
    assert scalars["sample/share_correct"] == [(1, pytest.approx(9 / 22))]
    assert scalars["sample/questions_none_correct"] == [(1, 4.0)]
    assert scalars["loss/final_loss"][1][1] == pytest.approx(5.6) and scalars["time/train_seconds"][0] == (0, 12.0)

    steps = str(tmp_path / "steps")
    first = EventLog(steps, replace=True)
    first.add(1, {"train/loss": 3.0}), first.add(2, {"train/loss": 2.0}), first.add(3, {"train/loss": 9.0})
    first.close()
    resumed = EventLog(steps, purge_step=3)  # resumed after step 2: the failed attempt's step 3 is withdrawn
    resumed.add(3, {"train/loss": 1.5})
    resumed.close()
    assert tensorboard_scalars(steps)["train/loss"] == [(1, 3.0), (2, 2.0), (3, 1.5)]


# -- on object storage -----------------------------------------------------------------------------------------


def test_status_report_and_event_files_on_the_s3_server(s3, tmp_path, capsys):
    cfg, run = make_run(f"s3://{BUCKET}/runs", rounds=1)
    write_run_report(run.uri, "r3v-ray run `w`", "w (r3v)", cfg.rounds, [])
    _check_report(run, cfg)
    events = EventLog(run.tensorboard_train(1))
    events.add(1, {"train/loss": 2.5})
    events.sync()  # uploaded while the writer goes on
    fs, path = store.resolve(run.tensorboard_train(1))
    assert [n for n in store.list_files(fs, path) if n.startswith("events.out.tfevents.")]
    events.add(2, {"train/loss": 2.25})
    events.close()
    local = tmp_path / "downloaded"
    store.publish_dir(path, str(local), src_fs=fs)
    assert tensorboard_scalars(local)["train/loss"] == [(1, 2.5), (2, 2.25)]
    assert main(["status", run.uri]) == 0
    assert "round 1: finished" in capsys.readouterr().out

    _, failed = make_run(f"s3://{BUCKET}/failed", upto="failed")
    assert "train failed (RuntimeError: the trainer ran out of memory)" in format_status(run_status(failed.uri))


# -- console and dashboard -------------------------------------------------------------------------------------


def test_console_prints_r3v_lines_short_and_warnings_with_their_source(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        console.setup(verbose=False)
        logging.getLogger("r3v.round").info("stage train: starting")
        logging.getLogger("r3v_ray.tasks.base").info("24 read, 0 skipped")  # a repeat of the stage lines: quiet
        logging.getLogger("r3v_ray.pipeline.sampling").warning("skipped question q1")
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[0][8:] == " stage train: starting" and err[0][2] == ":"
        assert err[1].endswith(" WARNING r3v_ray.pipeline.sampling: skipped question q1")
        console.setup(verbose=True)
        logging.getLogger("r3v_ray.tasks.base").info("24 read, 0 skipped")
        assert "INFO r3v_ray.tasks.base: 24 read, 0 skipped" in capsys.readouterr().err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in console._CHATTY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        console._quiet = False


def test_grafana_dashboard_charts_every_r3v_metric_under_its_exported_name():
    dashboard = json.loads((ROOT / "deploy" / "grafana-r3v.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for name, (kind, _, _) in telemetry.METRICS.items():
        exported = f"ray_{name}" + ("_total" if kind == "counter" else "")
        assert any(exported in e for e in exprs), name
    assert all("ray_r3v_" in e for e in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "run"}
