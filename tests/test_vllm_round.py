"""One whole self-training round with `sampling.engine: vllm` (real vLLM actors on CPU here, real DeepSpeed
training): round 0 (build -> train -> eval) and round 1 (sample -> build -> train -> eval), in this module's Ray."""

from __future__ import annotations

import pytest

from r3v_ray.run import store
from r3v_ray.config import config_from_dict
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.pipeline.round import read_split
from r3v_ray.run.layout import RunDir
from r3v_ray.pipeline.sampling import engine_kwargs, seed_key
from r3v_ray.pipeline.loop import run_local
from r3v_ray.tasks import get_task, load_image

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_a_round_with_vllm_sampling_samples_trains_and_evaluates(ray_local, tiny_model_dir, synthetic_data_dir,
                                                                  tmp_path):
    cfg = config_from_dict({
        "name": "vllm-round",
        "rounds": 1,
        "model": {"path": tiny_model_dir, "dtype": "float32"},
        "task": {"name": "synthetic", "data_dir": synthetic_data_dir, "max_train": 8, "max_test": 6},
        "sampling": {"engine": "vllm", "num_samples": 2, "max_new_tokens": 24, "batch_size": 4,
                     "max_model_len": 512, "cpu_kv_cache_gib": 0.25},
        "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
        "evaluation": {"n": 2, "max_new_tokens": 24, "zero_shot": False},
        "resources": {"num_samplers": 2, "num_train_workers": 2},
        "storage": {"root": str(tmp_path / "runs")},
    })
    metrics = run_local(cfg)
    assert sorted(metrics) == [0, 1]
    for k in (0, 1):
        manifest = store.read_json(RunDir.of(cfg).round(k).manifest_uri)
        stages = ["sample", "build", "train", "eval"] if k else ["build", "train", "eval"]
        assert all(manifest["stages"][s]["status"] == "done" for s in stages), manifest["stages"]
        assert metrics[k]["num_questions"] == 6 and metrics[k]["skipped"] == []
        assert {"test@1", "oracle@2", "majority@2", "select@2"} <= set(metrics[k])
    samples = store.read_parquet(RunDir.of(cfg).round(1).samples).to_pylist()
    assert len(samples) == 8 * 2 and {s["round"] for s in samples} == {1}

    # Round 1's Test@1 rationales are what a vLLM engine with the round-1 checkpoint says greedily.
    task = get_task("synthetic")
    records = read_split(cfg, task, synthetic_data_dir, "test")
    engine = create_engine("vllm", RunDir.of(cfg).round(1).checkpoint, **{**engine_kwargs(cfg), "cpu_cores": None})
    requests = [GenerationRequest(task.cot_prompt(r), load_image(r.image), seed_key(r.id, 1)) for r in records]
    greedy = engine.generate(requests, SamplingParams(max_new_tokens=24))
    written = {r["question_id"]: r["rationale"]
               for r in store.read_parquet(store.join(RunDir.of(cfg).round(1).eval_dir, "greedy.parquet")).to_pylist()}
    assert written == {r.id: o.texts[0] for r, o in zip(records, greedy)}
