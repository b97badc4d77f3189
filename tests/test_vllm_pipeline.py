"""Ray Data pools of real vLLM actors (CPU here): sampling with evaluation's greedy and self-select passes in the same
actors, rows vLLM refuses, batches that mix image paths and bytes, and each actor's threads on cores of its own.
One local Ray (2 CPUs, no GPU) for the module."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from r3v_ray.run import store
from r3v_ray.config import RunConfig
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.method.prompts import select_prompt
from r3v_ray.cluster.resources import sampler_remote_args
from r3v_ray.pipeline.sampling import engine_kwargs, params_from_config, records_to_rows, sample, seed_key
from r3v_ray.tasks import Record, get_task, load_image

pytestmark = pytest.mark.vllm
TASK = get_task("synthetic")
MAX_MODEL_LEN = 256


def _cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.model.dtype = "float32"
    cfg.sampling.engine = "vllm"
    cfg.sampling.max_new_tokens = 12
    cfg.sampling.batch_size = 4
    cfg.sampling.max_model_len = MAX_MODEL_LEN
    cfg.sampling.cpu_kv_cache_gib = 0.25
    return cfg  # 2 samplers of 1 CPU each and no GPU: the defaults


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rows(synthetic_data_dir, tmp_path_factory):
    """8 questions, every other one with its image as bytes (so each batch mixes paths and bytes), and the rows
    vLLM or the image decoder refuse."""
    records = list(TASK.read(synthetic_data_dir, "train"))[:8]
    good = records_to_rows(records, TASK)
    for i, row in enumerate(good):
        if i % 2:
            row["image"] = Path(row["image"]).read_bytes()
    bad = tmp_path_factory.mktemp("bad") / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    odd = [
        {**good[0], "question_id": "corrupt-image", "image": str(bad)},
        {**good[1], "question_id": "too-long", "prompt": "How many objects? " * 60},  # < max_prompt_tokens
        {**good[2], "question_id": "too-wide", "image": _png(Image.new("RGB", (4000, 10)))},  # aspect ratio 400
        {**good[3], "question_id": "no-image", "image": None},
    ]
    out = good[:4] + odd[:2] + good[4:] + odd[2:]
    for row in out:
        row["select_question"] = TASK.question_text(Record(**json.loads(row["record"])))
    return out


@pytest.fixture(scope="module")
def pooled(ray_local, tiny_model_dir, rows, tmp_path_factory):
    """One evaluation-style pass over a pool of 2 vLLM actors: 2 samples, greedy and self-select per question."""
    out = tmp_path_factory.mktemp("pool")
    cfg = _cfg()
    params = params_from_config(cfg.sampling, seed=7, n=2)
    uris = {k: str(out / f"{k}.parquet") for k in ("samples", "greedy", "select")}
    stats = sample(cfg, tiny_model_dir, rows, uris["samples"], params, round_index=1, greedy_uri=uris["greedy"],
                   select_uris={2: uris["select"]})
    tables = {k: store.read_parquet(u).to_pylist() for k, u in uris.items()}
    return stats, tables, params


@pytest.fixture(scope="module")
def local_engine(tiny_model_dir):
    """The same engine settings in this process (no Ray, no core claim), to check what the pool wrote."""
    return create_engine("vllm", tiny_model_dir, **{**engine_kwargs(_cfg()), "cpu_cores": None})


def _texts(table: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rec in sorted(table, key=lambda r: (r["question_id"], r["sample_index"])):
        out.setdefault(rec["question_id"], []).append(rec["rationale"])
    return out


def test_a_pool_of_vllm_actors_skips_only_the_rows_it_must_and_counts_them(pooled, rows):
    stats, tables, _ = pooled
    reasons = {s["question_id"]: s["reason"] for s in stats.skipped}
    assert set(reasons) == {"corrupt-image", "too-long", "too-wide"} and stats.num_skipped == 3
    assert "unreadable image" in reasons["corrupt-image"]
    assert f"max_model_len {MAX_MODEL_LEN}" in reasons["too-long"]
    assert "aspect ratio" in reasons["too-wide"]
    kept = [r["question_id"] for r in rows if r["question_id"] not in reasons]
    # every row of the mixed batches is sampled: image paths that Ray Data turned into bytes included
    assert sorted(_texts(tables["samples"])) == sorted(kept) and len(kept) == 9
    assert all(len(t) == 2 for t in _texts(tables["samples"]).values()) and stats.num_samples == 18
    for kind in ("greedy", "select"):
        assert {q: len(t) for q, t in _texts(tables[kind]).items()} == {q: 1 for q in kept}


def test_the_pool_wrote_what_the_engine_says_for_each_pass(pooled, rows, local_engine):
    _, tables, params = pooled
    kept = [r for r in rows if r["question_id"] in _texts(tables["samples"])]
    requests = [GenerationRequest(r["prompt"], load_image(r["image"]) if r["image"] is not None else None,
                                  seed_key(r["question_id"], 1)) for r in kept]
    samples = local_engine.generate(requests, params)
    assert _texts(tables["samples"]) == {r["question_id"]: o.texts for r, o in zip(kept, samples)}
    greedy = local_engine.generate(requests, replace(params, n=1, temperature=0.0))
    assert _texts(tables["greedy"]) == {r["question_id"]: o.texts for r, o in zip(kept, greedy)}
    select = local_engine.generate(
        [GenerationRequest(select_prompt(r["select_question"], o.texts[:2]), q.image, q.key)
         for r, q, o in zip(kept, requests, samples)],
        SamplingParams(n=1, temperature=0.0, max_new_tokens=params.max_new_tokens, seed=params.seed),
    )
    assert _texts(tables["select"]) == {r["question_id"]: o.texts for r, o in zip(kept, select)}


def test_two_vllm_actors_ask_for_cpus_only_and_run_on_cores_of_their_own(ray_local, tiny_model_dir, local_engine):
    import ray

    cfg = _cfg()
    assert sampler_remote_args(cfg) == {"num_cpus": 1.0, "num_gpus": 0.0}
    kw = engine_kwargs(cfg)
    assert kw["cpu_cores"] == 1

    @ray.remote(**sampler_remote_args(cfg))
    class Sampler:  # what the pool's EngineActor holds: the engine from the same settings
        def __init__(self):
            self.engine = create_engine("vllm", tiny_model_dir, **kw)

        def probe(self, request: GenerationRequest) -> dict:
            threads_on: set[int] = set()
            for tid in os.listdir("/proc/self/task"):
                try:
                    threads_on |= os.sched_getaffinity(int(tid))
                except OSError:
                    pass
            return {"cores": self.engine.cores, "threads_on": sorted(threads_on),
                    "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                    "texts": self.engine.generate([request], SamplingParams(max_new_tokens=12))[0].texts}

    record = next(TASK.generate_records("test", 1, 0))
    request = GenerationRequest(TASK.cot_prompt(record), TASK.render(record), "probe/1")
    actors = [Sampler.remote() for _ in range(2)]
    try:
        got = ray.get([a.probe.remote(request) for a in actors], timeout=600)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert [len(g["cores"]) for g in got] == [1, 1] and got[0]["cores"] != got[1]["cores"]
    for g in got:  # every thread of the actor, vLLM's included, runs on the actor's core only
        assert g["threads_on"] == g["cores"] and g["bind"] == str(g["cores"][0])
    expected = local_engine.generate([request], SamplingParams(max_new_tokens=12))[0].texts
    assert got[0]["texts"] == got[1]["texts"] == expected
