"""What the run directory's integrity records cost: the writes of a demo-sized round with sizes and checksums against
the same writes without them, the check a resumed run makes before trusting a finished round (checksums against
sizes only), and, to scale to real checkpoints, publishing and checking a directory of large files.

A demo-sized round (configs/demo.yaml): 200 train questions x 3 samples, the training set built from them, the
tiny model's checkpoint, 100 test questions' evaluation files and eval.json. The baseline writes the same files the
way r3v did before it recorded checksums (pyarrow writes straight to a temporary name, `pyarrow.fs.copy_files` for a
directory, a marker with sizes only). Each side runs `--repeats` times, alternating, and the median is taken. The
last line is one JSON object: {"benchmark": "integrity", "round_writes": {...}, "resume_check": {...},
"large_directory": {...}}.

    .venv/bin/python benchmarks/integrity.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from r3v_ray.run import store  # noqa: E402
from r3v_ray.config import RunConfig, config_from_dict  # noqa: E402
from r3v_ray.models.tiny import TinySpec, build_tiny_model  # noqa: E402
from r3v_ray.pipeline.prepare import tokenizer_corpus
from r3v_ray.method.reflect import build_training_data  # noqa: E402
from r3v_ray.run.layout import RunDir  # noqa: E402
from r3v_ray.pipeline.sampling import SAMPLE_SCHEMA  # noqa: E402
from r3v_ray.tasks import get_task  # noqa: E402


def demo_round_inputs(work: Path, n_train: int, n_test: int, samples: int) -> dict:
    """The tables, json and checkpoint directory a demo-sized round writes (made once, written many times)."""
    task = get_task("synthetic")
    task.write_dataset(work / "data", num_train=n_train, num_test=n_test, seed=0)
    records = {r.id: r for r in task.read(work / "data", "train")}
    pool = []
    for qid, r in records.items():
        for i in range(samples):
            right = i % 2 == 0
            answer = r.answer if right else "0"
            rationale = r.rationale if right else f"I count wrongly.\nAnswer: {answer}"
            pool.append(dict(question_id=qid, round=1, sample_index=i, rationale=rationale, extracted_answer=answer,
                             correct=right, n_tokens=64))
    examples, _ = build_training_data(pool, records, task, RunConfig().reflect, round_index=1)
    sample_table = pa.Table.from_pylist(pool, schema=SAMPLE_SCHEMA)
    test = sample_table.slice(0, n_test * samples)
    greedy = sample_table.slice(0, n_test)
    checkpoint = build_tiny_model(work / "model", TinySpec(hidden_size=64, num_layers=2), corpus=tokenizer_corpus())
    return {
        "samples.parquet": sample_table,
        "train.parquet": pa.Table.from_pylist(examples),
        "eval/samples.parquet": test,
        "eval/greedy.parquet": greedy,
        "eval/select.parquet": greedy,
        "eval.json": {"test@1": 40.0, "oracle@3": 60.0, "majority@3": 45.0, "select@3": 50.0, "n": 3},
        "checkpoint": str(checkpoint),
    }


def write_round(round_uri: str, inputs: dict) -> dict:
    """The round's writes as r3v makes them now: records taken while writing."""
    with store.recording() as written:
        for rel, value in inputs.items():
            uri = store.join(round_uri, rel)
            if rel == "checkpoint":
                store.publish_dir(value, uri)
            elif rel.endswith(".json"):
                store.write_json(uri, value)
            else:
                store.write_parquet(uri, value)
    return written


def write_round_baseline(round_uri: str, inputs: dict) -> None:
    """The same writes as before checksums: parquet straight to a temporary name, copy_files, a sizes-only marker."""
    fs, base = store.resolve(round_uri)
    for rel, value in inputs.items():
        path = f"{base}/{rel}"
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        tmp = f"{path.rpartition('/')[0]}/.{rel.rpartition('/')[2]}.tmp-{uuid.uuid4().hex[:8]}"
        if rel == "checkpoint":
            files = {r: {"size": i.size} for r, i in store.list_files(pafs.LocalFileSystem(), value).items()}
            fs.create_dir(tmp, recursive=True)
            pafs.copy_files(value, tmp, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            with fs.open_output_stream(f"{tmp}/{store.PUBLISHED}") as fh:
                fh.write(json.dumps({"id": uuid.uuid4().hex, "files": files}).encode())
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_dir(path)
        elif rel.endswith(".json"):
            with fs.open_output_stream(tmp) as fh:
                fh.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
        else:
            pq.write_table(value, tmp, filesystem=fs)
        fs.move(tmp, path)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(a, b, repeats: int) -> tuple[list[float], list[float]]:
    ta, tb = [], []
    for i in range(repeats):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            out.append(timed(fn))
    return ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller large directory")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--large-mib", type=int, default=None, help="size of the large directory (default 1024)")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    large_mib = args.large_mib or (256 if args.quick else 1024)
    work = Path(args.work or tempfile.mkdtemp(prefix="r3v-bench-integrity-"))
    try:
        inputs = demo_round_inputs(work, n_train=200, n_test=100, samples=3)
        cfg = config_from_dict({"name": "bench", "storage": {"root": str(work / "runs")}})
        round_dir = RunDir.of(cfg).round(1)
        base_uri = str(work / "baseline" / "round-001")

        with_checksums, without = alternate(lambda: write_round(round_dir.uri, inputs),
                                            lambda: write_round_baseline(base_uri, inputs), repeats)
        written = write_round(round_dir.uri, inputs)
        manifest = round_dir.open_manifest(cfg.digest())
        for stage in ("sample", "build", "train", "eval"):
            manifest.stages[stage] = {"status": "done", "outputs": round_dir.outputs_of(stage, written)}
        manifest.save()
        assert all(manifest.outputs(s) for s in manifest.stages) and round_dir.first_damage(manifest) is None
        sizes = {rel: info.size for rel, info in store.list_files(pafs.LocalFileSystem(), round_dir.uri).items()}

        def check(checksums: bool):
            def fn():
                store._verified.clear()  # a fresh driver: nothing verified yet
                for stage in ("sample", "build", "train", "eval"):
                    assert round_dir.damage(stage, manifest, checksums=checksums) is None
            return fn

        check_sha, check_sizes = alternate(check(True), check(False), repeats)

        # A large directory (real checkpoints are GBs): publish with checksums vs copy_files, then verify.
        big = work / "big"
        big.mkdir()
        chunk = os.urandom(1 << 20)
        for i in range(4):
            with open(big / f"model-{i:05d}.safetensors", "wb") as fh:
                for _ in range(large_mib // 4):
                    fh.write(chunk)
        dst = str(work / "big-published")

        def publish():
            store.publish_dir(str(big), dst)

        def copy_files():
            shutil.rmtree(work / "big-copied", ignore_errors=True)
            (work / "big-copied").mkdir()
            pafs.copy_files(str(big), str(work / "big-copied"))

        big_repeats = max(2, repeats // 2)
        pub, copied = alternate(publish, copy_files, big_repeats)
        verify = []
        for _ in range(big_repeats):
            store._verified.clear()
            verify.append(timed(lambda: store.check_published(dst, checksums=True)))
        med = statistics.median
        hashed, block = [], chunk * 64
        for _ in range(repeats):  # this machine's sha256 speed now (a loaded machine shows it)
            hashed.append(timed(lambda: store.record_of(block)))
        result = {
            "benchmark": "integrity",
            "repeats": repeats,
            "sha256_mib_per_s": round(64 / med(hashed)),
            "round_writes": {
                "files": len(sizes), "bytes": sum(sizes.values()),
                "with_checksums_s": round(med(with_checksums), 4), "baseline_s": round(med(without), 4),
                "added_s": round(med(with_checksums) - med(without), 4),
                "ratio": round(med(with_checksums) / med(without), 3),
            },
            "resume_check": {
                "checksums_s": round(med(check_sha), 4), "sizes_only_s": round(med(check_sizes), 4),
            },
            "large_directory": {
                "mib": large_mib, "files": 4,
                "publish_with_checksums_s": round(med(pub), 3), "copy_files_s": round(med(copied), 3),
                "added_s_per_gib": round((med(pub) - med(copied)) * 1024 / large_mib, 3),
                "verify_checksums_s_per_gib": round(med(verify) * 1024 / large_mib, 3),
            },
        }
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        print(json.dumps(result))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
