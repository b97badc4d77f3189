"""Run directories on object storage: a real S3-compatible server (moto's standalone server) on 127.0.0.1.

Fast tests cover the layout object, the one directory publish, the node cache and the start-of-run checks; the
slow ones share one two-round run with storage.root on the server (the `s3_run` fixture): watched, served and
compared with a local run's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import PY, ROOT, S3_BUCKET, environ, free_port, subprocess_env, tiny_run_config

from r3v_ray.run import store
from r3v_ray.run.cache import LocalImages, content_key, localize
from r3v_ray.config import ConfigError, config_from_dict
from r3v_ray.run.layout import RunDir, round_of_checkpoint

BUCKET = S3_BUCKET


def _model_dir(path: Path, weights: bytes = b"w" * 1000) -> Path:
    (path / "sub").mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "sub" / "weights.bin").write_bytes(weights)
    return path


# -- the layout ------------------------------------------------------------------------------------------------


def test_run_directory_layout_and_stage_state(tmp_path):
    cfg = config_from_dict({"name": "lay", "storage": {"root": str(tmp_path)}})
    run = RunDir.of(cfg)
    r1 = run.round(1)
    assert run.uri == f"{tmp_path}/lay" and r1.uri == f"{tmp_path}/lay/round-001"
    assert (r1.samples, r1.train_data, r1.checkpoint, r1.eval_json) == tuple(
        f"{tmp_path}/lay/round-001/{n}" for n in ("samples.parquet", "train.parquet", "checkpoint", "eval.json"))
    assert run.rounds() == [] and not run.any_stage_done() and not r1.done("build")
    r1.open_manifest(cfg.digest()).record("build", 0.5, stats={"n": 1})
    (tmp_path / "lay" / "round-000").mkdir()
    assert run.rounds() == [0, 1] and run.any_stage_done()
    assert r1.done("build") and r1.done("build", cfg.digest()) and not r1.done("build", "other") and not r1.done("train")
    assert round_of_checkpoint("s3://b/runs/lay/round-012/checkpoint") == (RunDir("s3://b/runs/lay"), 12)
    assert round_of_checkpoint(str(tmp_path / "model")) is None


# -- publishing a directory ------------------------------------------------------------------------------------


def test_publish_dir_locally_replaces_whole_and_the_marker_catches_a_damaged_copy(tmp_path):
    src = _model_dir(tmp_path / "src")
    dst = str(tmp_path / "out" / "checkpoint")
    first = store.publish_dir(str(src), dst)
    assert first["files"] == {"config.json": store.record_of(b"{}"), "sub/weights.bin": store.record_of(b"w" * 1000)}
    assert store.check_published(dst, checksums=True)["id"] == first["id"]
    (src / "sub" / "weights.bin").write_bytes(b"v" * 10)
    second = store.publish_dir(str(src), dst)
    assert second["id"] != first["id"] and Path(dst, "sub", "weights.bin").read_bytes() == b"v" * 10
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint"]  # no temporaries left
    Path(dst, "sub", "weights.bin").write_bytes(b"x" * 10)  # same size, other bytes: only a checksum sees it
    store.check_published(dst)
    with pytest.raises(store.StorageError, match="sub/weights.bin has changed: its sha256 is"):
        store.check_published(dst, checksums=True)
    Path(dst, "sub", "weights.bin").write_bytes(b"v" * 3)  # truncated behind the marker's back
    with pytest.raises(store.StorageError, match="sub/weights.bin is 3, but r3v_published.json records 10 bytes"):
        store.check_published(dst)
    # A rename (move) publishes without copying; the checksums are still taken.
    moved = store.publish_dir(str(_model_dir(tmp_path / "to-move", b"m" * 7)), str(tmp_path / "moved"), move=True)
    assert moved["files"]["sub/weights.bin"] == store.record_of(b"m" * 7) and not (tmp_path / "to-move").exists()


def test_publish_dir_on_s3_writes_the_marker_last_and_readers_trust_only_published(s3, tmp_path):
    src = _model_dir(tmp_path / "src")
    run = RunDir(f"s3://{BUCKET}/pub/run")
    ckpt = run.round(0).checkpoint
    # A half-uploaded checkpoint (files there, no marker) is not a checkpoint to anyone reading the run.
    store.copy_tree(str(src), ckpt)
    assert store.exists(store.join(ckpt, "config.json")) and not run.round(0).checkpoint_ready()
    marker = store.publish_dir(str(src), ckpt)
    assert run.round(0).checkpoint_ready() and store.published(ckpt)["id"] == marker["id"]
    fs, path = store.resolve(ckpt)
    with fs.open_output_stream(f"{path}/sub/weights.bin") as fh:  # a file cut short after publishing
        fh.write(b"w" * 10)
    assert not run.round(0).checkpoint_ready()
    with pytest.raises(store.StorageError, match="weights.bin is 10, but"):
        localize(ckpt, {"cache_dir": str(tmp_path / "cache")})


def test_star_adopts_round0_on_s3(s3, tmp_path):
    from r3v_ray.experiments.reproduce import adopt_round0, seed_config

    base = config_from_dict({"name": "b", "storage": {"root": f"s3://{BUCKET}/repro"}})
    r3v, star = seed_config(base, 0, "r3v"), seed_config(base, 0, "star")
    src = RunDir.of(r3v).round(0)
    store.publish_dir(str(_model_dir(tmp_path / "m")), src.checkpoint)
    src.open_manifest(r3v.digest()).record("train", 1.0)
    adopt_round0(r3v, star)
    dst = RunDir.of(star).round(0)
    assert dst.done("train", star.digest()) and not dst.done("train", r3v.digest())
    assert dst.manifest().stages["train"]["adopted_from"] == src.uri and dst.checkpoint_ready()
    assert store.exists(RunDir.of(star).config)


# -- the node cache --------------------------------------------------------------------------------------------


def test_cache_fetches_once_per_content_and_stays_within_its_cap(s3, tmp_path):
    cache = tmp_path / "cache"
    storage = {"cache_dir": str(cache), "cache_max_gb": 3000 / 1024**3}  # two 1000-byte entries and their markers
    uri = f"s3://{BUCKET}/cache/run/round-001/checkpoint"
    store.publish_dir(str(_model_dir(tmp_path / "a", b"a" * 1000)), uri)
    first = localize(uri, storage)
    assert Path(first, "sub", "weights.bin").read_bytes() == b"a" * 1000 and first.startswith(str(cache))
    assert localize(uri, storage) == first  # a hit: the same entry, no second copy
    # The same round exported again (same size, same names): a new entry, never the stale one.
    store.publish_dir(str(_model_dir(tmp_path / "b", b"b" * 1000)), uri)
    second = localize(uri, storage)
    assert second != first and Path(second, "sub", "weights.bin").read_bytes() == b"b" * 1000
    # A third entry goes over the cap: the least recently used one is removed.
    other = f"s3://{BUCKET}/cache/model"
    fs, path = store.resolve(other)
    with fs.open_output_stream(f"{path}/config.json") as fh:  # a plain upload (no marker): keyed by its listing
        fh.write(b"{}" + b" " * 998)
    third = localize(other, storage)
    assert Path(third, "config.json").stat().st_size == 1000
    assert not Path(first).exists() and Path(second).exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [Path(second).name, Path(third).name])
    # Local paths and file:// URIs are used where they are.
    assert localize(str(tmp_path / "a")) == str(tmp_path / "a") == localize(f"file://{tmp_path}/a")


def test_images_under_a_remote_data_dir_resolve_to_the_nodes_copy(s3, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "q1.png").write_bytes(b"png")
    uri = f"s3://{BUCKET}/data/synthetic"
    store.publish_dir(str(data), uri)
    images = LocalImages(uri, {"cache_dir": str(tmp_path / "cache")})
    local = images(f"{uri}/images/q1.png")
    assert Path(local).read_bytes() == b"png" and local.startswith(str(tmp_path / "cache"))
    assert images("/elsewhere/x.png") == "/elsewhere/x.png" and images(None) is None
    assert LocalImages(str(data))(str(data / "images" / "q1.png")) == str(data / "images" / "q1.png")
    assert content_key(uri) == content_key(uri + "/")


# -- checks at the start of a run ------------------------------------------------------------------------------


def test_unreachable_missing_or_unauthorised_storage_fails_before_anything_starts(s3, tmp_path):
    import ray

    from r3v_ray.pipeline.round import run_round

    def cfg(root: str):
        return config_from_dict({"name": "bad", "rounds": 0, "storage": {"root": root},
                                 "model": {"path": str(tmp_path / "m"), "tiny": {}},
                                 "task": {"data_dir": str(tmp_path / "d")}})

    with pytest.raises(store.StorageError, match=r"storage.root s3://no-such-bucket/runs/bad cannot be used: "
                                                 r"OSError: Bucket 'no-such-bucket' not found"):
        run_round(cfg("s3://no-such-bucket/runs"), 0)
    with environ(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"):  # nothing listens there
        with pytest.raises(store.StorageError, match=r"storage.root s3://r3v/runs/bad cannot be used: .*"
                                                     r"Could not connect to server"):
            run_round(cfg(f"s3://{BUCKET}/runs"), 0)
    with strict_s3_server() as endpoint, environ(AWS_ENDPOINT_URL=endpoint):  # every key is refused there
        with pytest.raises(store.StorageError, match=r"storage.root s3://r3v/runs/bad cannot be used: .*"
                                                     r"(InvalidAccessKeyId|ACCESS_DENIED|AccessDenied|Forbidden)"):
            run_round(cfg(f"s3://{BUCKET}/runs"), 0)
    # A model or data URI that is not there, and cannot be built, is named too.
    with pytest.raises(store.StorageError, match=rf"model.path s3://{BUCKET}/nothing-here does not exist"):
        run_round(config_from_dict({"name": "bad", "rounds": 0, "storage": {"root": f"s3://{BUCKET}/runs"},
                                    "model": {"path": f"s3://{BUCKET}/nothing-here"}}), 0)
    assert not ray.is_initialized()  # all of it before Ray (and so any actor) started
    from r3v_ray.serving.checkpoint import CheckpointError, resolve

    with pytest.raises(CheckpointError, match=r"s3://no-such-bucket/runs/x: no such run directory"):
        resolve(run_dir="s3://no-such-bucket/runs/x")  # what `r3v serve --run-dir` says
    with environ(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"):
        with pytest.raises(CheckpointError, match=r"s3://r3v/runs/x: cannot be read \(OSError: .*connect"):
            resolve(run_dir=f"s3://{BUCKET}/runs/x")
    assert not (tmp_path / "m").exists()  # nor was the model built


@pytest.fixture
def no_ray_job():
    yield
    os.environ.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)


def test_relative_paths_are_refused_inside_a_submitted_job(no_ray_job):
    from r3v_ray.cluster.preflight import check_job_paths

    cfg = config_from_dict({"name": "j", "model": {"path": "runs/tiny", "tiny": {}}})
    check_job_paths(cfg)  # not in a job: relative paths are the caller's directory
    os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = "{}"  # what Ray's job supervisor sets for a job's driver
    with pytest.raises(ConfigError, match=r"relative path\(s\) in a Ray job: storage.root=runs, task.data_dir="
                                          r"runs/synthetic-data, model.path=runs/tiny\. The job runs in "):
        check_job_paths(cfg)
    check_job_paths(config_from_dict({"storage": {"root": "s3://b/runs"}, "task": {"data_dir": "/data/x"},
                                      "model": {"path": "Qwen/Qwen2-VL-2B-Instruct"}}))  # a hub name is no path


class strict_s3_server:
    """A second moto server that refuses every access key (moto's IAM checks on from the first request)."""

    def __enter__(self) -> str:
        port = free_port()
        env = subprocess_env(INITIAL_NO_AUTH_ACTION_COUNT="0")
        self.proc = subprocess.Popen([str(Path(PY).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
                break
            except Exception:
                assert self.proc.poll() is None and time.time() < deadline, "moto_server did not start"
                time.sleep(0.3)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- two rounds on the S3 server, then serving from it ---------------------------------------------------------


def bucket_files(prefix: str) -> set[str]:
    fs, path = store.resolve(f"s3://{BUCKET}/{prefix}")
    return set(store.list_files(fs, path))


def local_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def comparable(paths: set[str]) -> set[str]:
    """Ray Train's own storage (checkpoint.ray/) names its files after a fingerprint and a per-call id, and a
    TensorBoard event file after its time, host and process: compared by the files' names within checkpoint.ray/,
    by directory for event files, the rest exactly."""
    out = set()
    for p in paths:
        if ".ray/" in p:
            head, _, tail = p.partition(".ray/")
            out.add(f"{head}.ray/.../{tail.rpartition('/')[2]}")
        elif "/events.out.tfevents." in p:
            out.add(p.rpartition("/")[0] + "/events.out.tfevents.*")
        else:
            out.add(p)
    return out


@pytest.fixture(scope="module")
def s3_run(s3, tmp_path_factory, tiny_model_dir, synthetic_data_dir, tiny_two_round_run) -> dict:
    """`tiny_two_round_run`'s config with its run directory on the S3 server, run to the end by jobs/selftrain.py:
    {"name", "run" (its RunDir), "out", "cache" (this node's cache), "seconds"}. Read it only."""
    base = tmp_path_factory.mktemp("s3-run")
    name = tiny_two_round_run["name"]
    config = tiny_run_config(base / "s3.yaml", name, f"s3://{BUCKET}/runs", tiny_model_dir, synthetic_data_dir,
                             base / "cache")
    started = time.time()
    done = subprocess.run([PY, str(ROOT / "jobs" / "selftrain.py"), "--config", str(config)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {"name": name, "run": RunDir(f"s3://{BUCKET}/runs/{name}"), "out": done.stdout + done.stderr, "cache": base / "cache",
            "seconds": round(time.time() - started, 1)}


@pytest.mark.slow
def test_two_rounds_run_with_their_run_directory_on_s3(s3_run):
    run = s3_run["run"]
    assert f"run directory: {run.uri}" in s3_run["out"]
    assert run.rounds() == [0, 1] and all(run.round(k).done("eval") for k in (0, 1))
    assert run.round(1).checkpoint_ready() and store.published(run.round(1).checkpoint)
    ev1 = store.read_json(run.round(1).eval_json)
    assert ev1["num_questions"] == 4 and run.round(1).manifest().stages["eval"]["model"] == run.round(1).checkpoint
    print(json.dumps({"s3_run_seconds": s3_run["seconds"]}))


@pytest.mark.slow
def test_status_report_and_tensorboard_of_a_run_on_s3(s3_run):
    run = s3_run["run"]
    status = subprocess.run([PY, "-m", "r3v_ray.cli", "status", run.uri], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "round 1: finished" in status.stdout, status.stdout + status.stderr
    assert "next: nothing: rounds 0..1 are finished" in status.stdout
    report = store.read_text(run.report)
    assert "## Sample pool" in report and "## Training loss" in report and "| 1 | 8 |" in report
    assert all(store.read_bytes(p)[:4] == b"\x89PNG" for p in (run.plot, run.loss_plot, run.samples_plot))
    events = [p for p in bucket_files(f"runs/{s3_run['name']}/tensorboard") if "/events.out.tfevents." in p]
    assert sorted(p.partition("/")[0] for p in events) == ["rounds", "train-round-000", "train-round-001"], events


@pytest.mark.slow
def test_a_node_fetches_each_checkpoint_of_a_run_on_s3_into_its_cache_once(s3_run):
    # Evaluation's samplers and round 1's samplers loaded the checkpoints from this node's cache, fetched once each.
    cached = sorted(p.name for p in s3_run["cache"].iterdir() if not p.name.startswith("."))
    assert len(cached) == 2 and all(c.startswith("checkpoint-") for c in cached), cached


@pytest.mark.slow
def test_a_run_on_s3_leaves_the_files_and_bytes_of_a_local_run(s3_run, tiny_two_round_run):
    # The same run on a local disk (conftest's run, shared) leaves the same files at the same relative paths, and
    # the same bytes in every stage output (the manifests record them; a publish id differs, the content not).
    run = s3_run["run"]
    in_bucket = bucket_files(f"runs/{tiny_two_round_run['name']}")
    on_disk = local_files(tiny_two_round_run["run"])
    assert comparable(in_bucket) == comparable(on_disk), (comparable(in_bucket) ^ comparable(on_disk))
    assert not [p for p in in_bucket if ".tmp-" in p or ".old-" in p or "access-probe" in p]
    for k in (0, 1):
        local = RunDir(str(tiny_two_round_run["run"])).round(k).manifest()
        assert {s: sorted((rel, r["sha256"]) for rel, r in (run.round(k).manifest().outputs(s) or {}).items())
                for s in local.stages} == {s: sorted((rel, r["sha256"]) for rel, r in (local.outputs(s) or {}).items())
                                           for s in local.stages}
    assert not tiny_two_round_run["cache"].exists()  # a local run copies nothing
    print(json.dumps({"s3_run_seconds": s3_run["seconds"], "local_run_seconds": tiny_two_round_run["seconds"]}))


@pytest.mark.slow
def test_serve_answers_from_the_newest_round_of_a_run_on_s3(s3_run, tmp_path):
    # `r3v serve --run-dir s3://...` finds round 1 and answers.
    import argparse
    import base64
    import io

    import ray
    import requests
    from ray import serve

    from r3v_ray.serving.launch import add_serve_args, start
    from r3v_ray.tasks import get_task

    run = s3_run["run"]
    port = free_port()
    args = add_serve_args(argparse.ArgumentParser()).parse_args(
        ["--run-dir", run.uri, "--port", str(port), "--set", f"storage.cache_dir={tmp_path / 'serve-cache'}",
         "--set", "serve.max_new_tokens=16", "--set", "evaluation.select_max_new_tokens=8"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        url, model_id = start(args)
        assert model_id == f"{s3_run['name']}-round-1"
        record = next(get_task("synthetic").generate_records("test", 1, 0))
        buf = io.BytesIO()
        get_task("synthetic").render(record).save(buf, format="PNG")
        reply = requests.post(f"{url}/v1/select", json={"question": record.question, "n": 2,
                                                        "image": base64.b64encode(buf.getvalue()).decode()},
                              timeout=300)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["candidates"]) == 2
        models = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
        assert models["checkpoint"] == run.round(1).checkpoint and models["round"] == 1
        assert len(list((tmp_path / "serve-cache").glob("checkpoint-*"))) == 1
    finally:
        serve.shutdown()
        ray.shutdown()


_FULL_DISK = """
import resource, signal, sys
from r3v_ray.run import store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) as on a full disk (ENOSPC)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
for what, write in (("file", lambda: store.write_bytes(sys.argv[1] + "/f.bin", b"x" * 100_000)),
                    ("dir", lambda: store.publish_dir(sys.argv[1] + "/src", sys.argv[1] + "/dst"))):
    try:
        write()
    except store.StorageError as exc:
        print(what, exc)
"""


def test_a_write_that_fails_for_space_names_the_path_and_size_and_leaves_no_temp_file(tmp_path):
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: the same failed write() underneath."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.bin").write_bytes(b"w" * 50_000)
    out = subprocess.run([PY, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=subprocess_env())
    lines = out.stdout.splitlines()
    assert len(lines) == 2, (out.stdout, out.stderr)
    assert lines[0].startswith(f"file cannot write {tmp_path}/f.bin (100000 bytes needed; ")
    assert lines[1].startswith(f"dir cannot write {tmp_path}/dst (50000 bytes needed; ")
    assert all("bytes free there): " in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no .f.bin.tmp-*, no .dst.tmp-*
