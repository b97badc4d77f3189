"""A damaged run directory is named, never trusted, and a disturbed run leaves the bytes of an undisturbed one.

Every finished stage records the size and sha256 of what it wrote in its round manifest (a published directory:
its marker's digest, the files' records being in the marker). Fast tests cover the records, the checks (local and
on a real S3 server), a manifest that cannot be read, serving's refusal of a damaged newest round and --force
redoing a damaged stage. The slow tests share one two-round run whose sampler actor, train worker and driver were
killed (the `disturbed_run` fixture): it is compared byte for byte with the undisturbed run (conftest's
`tiny_two_round_run`, shared with tests/test_storage.py), then copies of it are damaged the ways issue 16 found and
what the commands say is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import PY, ROOT, S3_BUCKET, subprocess_env, tiny_run_config

from r3v_ray.run import store
from r3v_ray.cli import main as r3v
from r3v_ray.config import config_from_dict
from r3v_ray.run.manifest import Manifest, ManifestError
from r3v_ray.pipeline.round import RoundRunner
from r3v_ray.run.layout import DamagedRunError, RunDir
from r3v_ray.serving import checkpoint as ckpt

BUCKET = S3_BUCKET


def _table(n: int) -> pa.Table:
    return pa.table({"question_id": [f"q{i}" for i in range(n)], "rationale": ["Answer: 3"] * n})


def _finished_sample_stage(root: str) -> tuple[RunDir, Manifest]:
    """Round 1 of a run whose sample stage wrote samples.parquet and skipped.json, recorded as a stage records."""
    cfg = config_from_dict({"name": "r", "storage": {"root": root}})
    round_dir = RunDir.of(cfg).round(1)
    manifest = round_dir.open_manifest(cfg.digest())
    with store.recording() as written:
        store.write_parquet(round_dir.samples, _table(5))
        store.write_json(round_dir.skipped, [{"question_id": "q9", "reason": "image"}])
        store.write_json(store.join(round_dir.uri, "progress.json"), {"not": "an output"})
    manifest.record("sample", 1.0, outputs=round_dir.outputs_of("sample", written))
    return RunDir.of(cfg), manifest


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_stage_records_what_it_wrote_and_each_change_is_named(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else (request.getfixturevalue("s3") and f"s3://{BUCKET}/{tmp_path.name}")
    run, manifest = _finished_sample_stage(root)
    r1 = run.round(1)
    outputs = manifest.outputs("sample")
    assert set(outputs) == {"samples.parquet", "skipped.json"}  # only the stage's own outputs
    data = store.read_bytes(r1.samples)
    assert outputs["samples.parquet"] == store.record_of(data) and r1.damage("sample") is None
    assert r1.read_samples().num_rows == 5
    fs, path = store.resolve(r1.samples)

    def overwrite(content: bytes) -> None:
        with fs.open_output_stream(path) as fh:
            fh.write(content)

    overwrite(data[:-7])  # truncated
    truncated = f"{r1.samples} is {len(data) - 7} bytes, but {len(data)} were recorded"
    assert r1.damage("sample", checksums=False) == truncated
    with pytest.raises(DamagedRunError) as err:
        r1.verify("sample")
    message = str(err.value)
    assert r1.samples in message and "round 1's sample stage" in message and "Restore it, or redo that stage" in message
    assert "--from-round 1 --force" in message and "--round 1 --force" in message
    with pytest.raises(DamagedRunError, match="samples.parquet is"):
        r1.read_samples()  # a later round's build reads it: the same error, not a parquet traceback
    overwrite(bytes([data[0] ^ 1]) + data[1:])  # the same size, one bit changed: only the checksum sees it
    assert r1.damage("sample", checksums=False) is None
    assert "samples.parquet has changed: its sha256 is" in r1.damage("sample")
    with pytest.raises(DamagedRunError, match="has changed"):
        r1.read_samples()
    fs.delete_file(path)
    assert r1.damage("sample") == f"{r1.samples} is missing"


def test_a_manifest_that_cannot_be_read_names_itself_and_force_starts_it_afresh(tmp_path, capsys):
    cfg = config_from_dict({"name": "g", "storage": {"root": str(tmp_path)}})
    r1 = RunDir.of(cfg).round(1)
    for garbage in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"stages": {"sample": "done"}}'):
        store.write_bytes(r1.manifest_uri, garbage)
        with pytest.raises(ManifestError) as err:
            r1.manifest()
        assert str(err.value).startswith(f"{r1.manifest_uri} cannot be read as round 1's manifest")
        assert "--from-round 1 --force" in str(err.value)
    with pytest.raises(ManifestError):
        r1.open_manifest(cfg.digest())
    fresh = r1.open_manifest(cfg.digest(), force=True)
    assert fresh.stages == {} and fresh.config_digest == cfg.digest()
    # The command line names the file (no JSONDecodeError traceback), before anything starts.
    r0 = RunDir.of(cfg).round(0)
    store.write_bytes(r0.manifest_uri, b"{garbage")
    config = tmp_path / "g.yaml"
    config.write_text(cfg.to_yaml())
    capsys.readouterr()
    assert r3v(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {r0.manifest_uri} cannot be read") and "Traceback" not in err


def test_force_redoes_a_damaged_stage_and_what_was_made_from_it_only_if_it_changed(tmp_path):
    cfg = config_from_dict({"name": "f", "rounds": 2, "storage": {"root": str(tmp_path)}})
    run = RunDir.of(cfg)
    calls: list[str] = []

    def stage(name: str, uri: str, rows: int):
        def fn():
            calls.append(name)
            store.write_parquet(uri, _table(rows))
            return {"rows": rows}
        return fn

    r1, r2 = run.round(1), run.round(2)
    manifest = r1.open_manifest(cfg.digest())
    runner = RoundRunner(cfg, 1)
    assert runner._stage(manifest, "sample", stage("sample", r1.samples, 4))
    assert runner._stage(manifest, "build", stage("build", r1.train_data, 2))
    r2.open_manifest(cfg.digest()).record("sample", 1.0, outputs={})  # a later round, made from round 1
    good = store.read_bytes(r1.samples)
    store.write_bytes(r1.samples, good[:10])
    with pytest.raises(DamagedRunError, match="samples.parquet is 10 bytes"):
        runner._stage(manifest, "sample", stage("sample", r1.samples, 4))
    forced = RoundRunner(cfg, 1, force=True)
    # Redone into the same bytes: what was made from them stays done.
    assert not forced._stage(manifest, "sample", stage("sample", r1.samples, 4))
    assert store.read_bytes(r1.samples) == good and r2.done("sample")
    assert not forced._stage(manifest, "build", stage("build", r1.train_data, 2)) and calls[-1] == "sample"
    # Redone into other bytes: the later stages of the round and the later rounds are redone.
    store.write_bytes(r1.samples, good[:10])
    assert forced._stage(manifest, "sample", stage("sample", r1.samples, 6))
    assert r2.manifest().stages["sample"]["status"] == "stale" and not r2.done("sample")
    # (r3v_ray/pipeline/round.py passes redo=True on to the later stages: rebuilt, here into the same bytes as before)
    assert not forced._stage(manifest, "build", stage("build", r1.train_data, 2), redo=True) and calls[-1] == "build"


def _trained_round(run: RunDir, k: int, model_dir: str, digest: str) -> None:
    """Round k's train stage as the stage records it: the checkpoint published, its record in the manifest."""
    round_dir = run.round(k)
    with store.recording() as written:
        store.publish_dir(model_dir, round_dir.checkpoint)
    round_dir.open_manifest(digest).record("train", 1.0, outputs=round_dir.outputs_of("train", written))


def test_serving_refuses_a_newest_round_whose_checkpoint_is_missing_or_damaged(tmp_path, tiny_model_dir, capsys):
    cfg = config_from_dict({"name": "srv", "storage": {"root": str(tmp_path)}})
    run = RunDir.of(cfg)
    for k in (0, 1):
        _trained_round(run, k, tiny_model_dir, cfg.digest())
    store.makedirs(run.round(2).uri)
    run.round(2).open_manifest(cfg.digest()).record("sample", 1.0, outputs={})  # round 2 is still training
    assert ckpt.resolve(run_dir=run.uri).round == 1
    weights = next(Path(run.round(1).checkpoint).glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # the same size, other bytes
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.resolve(run_dir=run.uri)
    assert f"{weights.name} has changed" in str(err.value) and "round 1 is not served" in str(err.value)
    shutil.rmtree(run.round(1).checkpoint)
    with pytest.raises(ckpt.CheckpointError, match=f"{run.round(1).checkpoint} is missing: round 1's train stage"):
        ckpt.resolve(run_dir=run.uri)
    assert ckpt.resolve(run_dir=run.uri, round_=0).round == 0  # an older round only when asked for by name
    assert r3v(["serve", "--run-dir", run.uri]) == 2
    err = capsys.readouterr().err
    assert f"{run.round(1).checkpoint} is missing" in err and "--from-round 1 --force" in err
    store.write_bytes(run.round(1).manifest_uri, b"\x00garbage")
    with pytest.raises(ckpt.CheckpointError, match=f"{run.round(1).manifest_uri} cannot be read"):
        ckpt.resolve(run_dir=run.uri)


def test_a_node_copying_a_damaged_checkpoint_from_s3_refuses_it(s3, tmp_path, tiny_model_dir):
    from r3v_ray.run.cache import localize

    run = RunDir(f"s3://{BUCKET}/serve-run")
    _trained_round(run, 1, tiny_model_dir, "d")
    r1 = run.round(1)
    assert r1.damage("train") is None and ckpt.resolve(run_dir=run.uri).round == 1
    marker = store.published(r1.checkpoint)
    name = next(rel for rel in marker["files"] if rel.endswith(".safetensors"))
    fs, path = store.resolve(store.join(r1.checkpoint, name))
    data = store.read_bytes(store.join(r1.checkpoint, name))
    with fs.open_output_stream(path) as fh:  # the same size, other bytes: sizes match, the copy's checksum not
        fh.write(data[:-1] + bytes([data[-1] ^ 1]))
    assert r1.damage("train") is None  # a remote directory is not read in place ...
    cache = tmp_path / "cache"
    with pytest.raises(store.StorageError, match=f"{name} has changed: its sha256 is"):
        localize(r1.checkpoint, {"cache_dir": str(cache)})  # ... but checked by every copy made of it
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing half-trusted left behind
    with fs.open_output_stream(path) as fh:
        fh.write(data[:50])
    assert f"{name} is 50, but r3v_published.json records" in r1.damage("train")


# -- a disturbed two-round run -------------------------------------------------------------------------------------


def _stages(run: Path, k: int) -> dict:
    """The round's finished stages (a manifest also lists a running or failed one, without finished_at)."""
    try:
        stages = json.loads((run / f"round-{k:03d}" / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):  # not there yet
        return {}
    return {name: rec for name, rec in stages.items() if rec.get("status") == "done"}


def _alive(class_prefix: str) -> dict | None:
    """An actor of this test's Ray that is alive now, by class."""
    from ray._private.state import actors

    for actor in actors().values():
        if actor["ActorClassName"].startswith(class_prefix) and actor["State"] == "ALIVE":
            return actor
    return None


def _busy_map_worker(raylet_pid: int) -> int | None:
    """The pid of a Ray Data map worker of this test's Ray that is running a batch now, or None.

    Read from the process titles Ray sets (`ray::MapWorker(...).submit` while a batch runs): the state API is too
    slow to poll for a round's sampling, which on 2 cores can be over within a second of its actor starting. Only a
    child of this test's raylet is ever returned."""
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if title.startswith("ray::MapWorker(") and title.endswith(".submit"):
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == raylet_pid:
                    return int(proc.name)
        except (OSError, ValueError, IndexError):  # not a pid, or gone while read
            continue
    return None


def _outputs(run: Path, k: int) -> dict:
    """{stage: {path: sha256}} of a round's recorded outputs (a checkpoint: its content digest)."""
    manifest = RunDir(str(run)).round(k).manifest()
    return {s: {rel: r["sha256"] for rel, r in (manifest.outputs(s) or {}).items()} for s in manifest.stages}


@pytest.fixture(scope="module")
def disturbed_run(ray_local, tiny_two_round_run, tiny_model_dir, synthetic_data_dir, tmp_path_factory) -> dict:
    """`tiny_two_round_run`'s config run again by jobs/selftrain.py in this module's Ray, with a train worker of
    round 0, round 1's sampler (a batch in flight) and then the driver (round 1 sampled) killed, then run once more
    to the end: {"run", "ref", "killed", "actors" (the state API's after the kill), "resumed" (its output)}. Read
    it only: the damage tests take a copy (`_copy`)."""
    base = tmp_path_factory.mktemp("disturbed")
    config = tiny_run_config(base / "c.yaml", tiny_two_round_run["name"], str(base / "runs"), tiny_model_dir,
                             synthetic_data_dir, base / "cache")
    run = base / "runs" / tiny_two_round_run["name"]
    env = _env(ray_local)
    cmd = [PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)]
    raylet_pid = ray_local._private.worker._global_node.all_processes["raylet"][0].process.pid
    killed: dict[str, dict] = {}
    log_path = base / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.time() + 900
            while "driver" not in killed:
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, f"the run never got far enough to disturb (killed: {list(killed)})"
                r0, r1 = _stages(run, 0), _stages(run, 1)
                if "worker" not in killed and "build" in r0 and "train" not in r0:
                    if actor := _alive("RayTrainWorker"):  # round 0's training: the worker group restarts
                        os.kill(actor["Pid"], signal.SIGKILL)
                        killed["worker"] = actor | {"at": time.time()}
                elif "sampler" not in killed and "eval" in r0 and "sample" not in r1:
                    if pid := _busy_map_worker(raylet_pid):  # round 1's sampler, a batch in flight
                        os.kill(pid, signal.SIGKILL)
                        killed["sampler"] = {"pid": pid, "after": r0["eval"]["finished_at"]}
                elif "sample" in r1 and "train" not in r1:  # round 1 sampled: the driver dies in build or train
                    os.killpg(driver.pid, signal.SIGKILL)
                    killed["driver"] = {"stages": sorted(r1)}
                time.sleep(0.02 if "eval" in r0 else 0.2)  # round 1's sampling may last only a second
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert set(killed) == {"worker", "sampler", "driver"}, (killed, log_path.read_text()[-3000:])

    from ray._private.state import actors

    after_kill = actors()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    resumed = second.stdout + second.stderr
    assert second.returncode == 0, resumed[-4000:]
    return {"run": run, "ref": tiny_two_round_run["run"], "killed": killed, "actors": after_kill,
            "resumed": resumed}


def _env(ray) -> dict:
    env = subprocess_env()
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # this module's Ray: the test sees every actor
    return env


def _copy(disturbed: dict, tmp_path: Path, tiny_model_dir: str, synthetic_data_dir: str) -> tuple[Path, list[str]]:
    """A copy of the disturbed run to damage, and the command that runs it."""
    run = tmp_path / "runs" / disturbed["run"].name
    shutil.copytree(disturbed["run"], run)
    config = tiny_run_config(tmp_path / "c.yaml", run.name, str(tmp_path / "runs"), tiny_model_dir,
                             synthetic_data_dir, tmp_path / "cache")
    return run, [PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)]


@pytest.mark.slow
def test_a_killed_train_worker_group_is_replaced(disturbed_run):
    killed, now = disturbed_run["killed"]["worker"], disturbed_run["actors"]
    assert now[killed["ActorID"]]["State"] == "DEAD"
    assert any(a["ActorClassName"] == "RayTrainWorker" and a["StartTime"] / 1000 > killed["at"]
               for a in now.values()), "no new train worker group after the kill"


@pytest.mark.slow
def test_a_sampler_killed_with_a_batch_in_flight_is_restarted(disturbed_run):
    after = disturbed_run["killed"]["sampler"]["after"]
    samplers = [a for a in disturbed_run["actors"].values()
                if a["ActorClassName"].startswith("MapWorker") and a["StartTime"] / 1000 > after]
    assert any(a["NumRestarts"] >= 1 for a in samplers), samplers  # restarted by Ray Data, its batch retried


@pytest.mark.slow
def test_a_run_whose_driver_was_killed_resumes_after_its_last_finished_stage(disturbed_run):
    out = disturbed_run["resumed"]
    assert "round 0 already finished under this config, skipped" in out
    assert "round 1] stage sample: already done" in out and "round 1] stage train: starting" in out


@pytest.mark.slow
def test_a_disturbed_run_leaves_the_bytes_of_an_undisturbed_one(disturbed_run):
    # The samples, every eval.json, and every other recorded output (the rationales behind each number, the
    # checkpoints' files).
    run, ref = disturbed_run["run"], disturbed_run["ref"]
    for rel in ("round-001/samples.parquet", "round-000/eval.json", "round-001/eval.json"):
        assert (run / rel).read_bytes() == (ref / rel).read_bytes(), rel
    for k in (0, 1):
        assert _outputs(run, k) == _outputs(ref, k)


# Damaged the ways issue 16 found.

@pytest.mark.slow
def test_a_truncated_samples_file_is_named_with_what_to_do_and_force_rewrites_its_bytes(
        disturbed_run, ray_local, tmp_path, tiny_model_dir, synthetic_data_dir):
    run, cmd = _copy(disturbed_run, tmp_path, tiny_model_dir, synthetic_data_dir)
    samples = run / "round-001" / "samples.parquet"
    good = samples.read_bytes()
    samples.write_bytes(good[: len(good) // 2])
    again = subprocess.run(cmd, cwd=ROOT, env=_env(ray_local), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert f"{samples} is {len(good) // 2} bytes, but {len(good)} were recorded" in again.stderr
    assert "--from-round 1 --force" in again.stderr and "Traceback" not in again.stderr

    # Redone as it says: the same bytes again, so nothing made from them is redone.
    forced = subprocess.run(cmd + ["--from-round", "1", "--force"], cwd=ROOT, env=_env(ray_local),
                            capture_output=True, text=True, timeout=600)
    out = forced.stdout + forced.stderr
    assert forced.returncode == 0, out[-4000:]
    assert samples.read_bytes() == good and "stage sample: its outputs are the same bytes as before" in out
    assert all(f"round 1] stage {s}: already done" in out for s in ("build", "train", "eval"))


@pytest.mark.slow
def test_a_garbage_manifest_is_named(disturbed_run, ray_local, tmp_path, tiny_model_dir, synthetic_data_dir):
    run, cmd = _copy(disturbed_run, tmp_path, tiny_model_dir, synthetic_data_dir)
    manifest = run / "round-001" / "manifest.json"
    manifest.write_bytes(b"{\x00 not a manifest")
    again = subprocess.run(cmd, cwd=ROOT, env=_env(ray_local), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and f"{manifest} cannot be read as round 1's manifest" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_a_deleted_checkpoint_is_refused_by_serving_and_by_the_run(
        disturbed_run, ray_local, tmp_path, tiny_model_dir, synthetic_data_dir, capsys):
    # checkpoint/ deleted while the manifest says train is done: serving refuses the round (no older one instead),
    # and so does the run.
    run, cmd = _copy(disturbed_run, tmp_path, tiny_model_dir, synthetic_data_dir)
    shutil.rmtree(run / "round-001" / "checkpoint")
    assert r3v(["serve", "--run-dir", str(run)]) == 2
    assert f"{run / 'round-001' / 'checkpoint'} is missing: round 1's train stage" in capsys.readouterr().err
    again = subprocess.run(cmd, cwd=ROOT, env=_env(ray_local), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and f"{run / 'round-001' / 'checkpoint'} is missing" in again.stderr
