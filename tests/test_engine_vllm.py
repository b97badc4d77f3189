"""The vLLM engine: its input building on CPU (no vllm needed), the real engine on a GPU (marked `gpu`)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from PIL import Image

import r3v_ray
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.engines.base import row_seed
from r3v_ray.engines.vllm_engine import resolve_lora, vllm_input, vllm_sampling_kwargs
from r3v_ray.tasks import get_task

SAMPLED = SamplingParams(n=3, temperature=0.9, top_p=0.95, top_k=0, max_new_tokens=16, seed=11)


def _module_level_imports(path: Path) -> set[str]:
    """Top-level module names imported outside any function (what importing the module pulls in)."""
    names: set[str] = set()

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if not inside and isinstance(child, ast.Import):
                names.update(a.name.split(".")[0] for a in child.names)
            elif not inside and isinstance(child, ast.ImportFrom) and child.module:
                names.add(child.module.split(".")[0])
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return names


def test_vllm_is_imported_only_inside_the_engine():
    package = Path(r3v_ray.__file__).parent
    for path in package.rglob("*.py"):
        assert "vllm" not in _module_level_imports(path), f"{path} imports vllm at module level"
    engine_src = (package / "engines" / "vllm_engine.py").read_text()
    assert "from vllm import LLM" in engine_src  # ...and the engine does use it, lazily


def test_vllm_input_carries_the_image_only_when_there_is_one():
    img = Image.new("RGB", (28, 28))
    assert vllm_input("<chat>") == {"prompt": "<chat>"}
    assert vllm_input("<chat>", img) == {"prompt": "<chat>", "multi_modal_data": {"image": img}}


def test_sampling_kwargs_seed_each_row_by_its_key_and_map_top_k():
    a = vllm_sampling_kwargs(SAMPLED, "q1/1", stop_token_ids=[5])
    assert a == {
        "n": 3,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": -1,  # our 0 ("no filter") is vLLM's -1
        "max_tokens": 16,
        "seed": row_seed(11, "q1/1", 0),
        "stop_token_ids": [5],
    }
    assert vllm_sampling_kwargs(SAMPLED, "q1/1")["seed"] == a["seed"]  # stable for a key
    assert vllm_sampling_kwargs(SAMPLED, "q2/1")["seed"] != a["seed"]  # independent of batch neighbours
    assert vllm_sampling_kwargs(SamplingParams(**{**SAMPLED.__dict__, "top_k": 50}), "q1/1")["top_k"] == 50


def test_greedy_kwargs_are_really_greedy():
    kw = vllm_sampling_kwargs(SamplingParams(max_new_tokens=7), "q1/0")
    assert kw == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 7}


def test_lora_adapter_directories_resolve_to_base_plus_adapter(tmp_path):
    plain = tmp_path / "model"
    plain.mkdir()
    assert resolve_lora(str(plain), None, False) == (str(plain), None, False)
    assert resolve_lora(str(plain), "/adapters/a", False) == (str(plain), "/adapters/a", True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base", "r": 16}))
    assert resolve_lora(str(adapter), None, False) == ("/models/base", str(adapter), True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16}))
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        resolve_lora(str(adapter), None, False)


def test_engine_kwargs_from_config_and_tensor_parallel_needs_its_gpus():
    from r3v_ray.config import RunConfig
    from r3v_ray.sampling import engine_kwargs

    cfg = RunConfig()
    assert "tensor_parallel_size" not in engine_kwargs(cfg)  # hf
    cfg.sampling.engine = "vllm"
    with pytest.raises(ValueError, match="gpus_per_sampler > 0"):
        engine_kwargs(cfg)
    cfg.resources.gpus_per_sampler = 0.5  # two tp=1 engines may share a GPU
    assert engine_kwargs(cfg)["tensor_parallel_size"] == 1
    cfg.sampling.tensor_parallel_size = 2
    with pytest.raises(ValueError, match="resources.gpus_per_sampler >= 2"):
        engine_kwargs(cfg)
    cfg.resources.gpus_per_sampler = 2
    kw = engine_kwargs(cfg)
    assert (kw["tensor_parallel_size"], kw["gpu_memory_utilization"], kw["max_prompt_tokens"]) == (2, 0.85, 2048)


# -- the real engine (GPU) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    pytest.importorskip("vllm", reason="vllm is not installed (pip install 'r3v-ray[gpu]')")
    return create_engine("vllm", tiny_model_dir, dtype="float16", gpu_memory_utilization=0.3, max_model_len=1024)


@pytest.fixture(scope="module")
def requests_():
    task = get_task("synthetic")
    return [GenerationRequest(task.cot_prompt(r), task.render(r), f"{r.id}/1") for r in task.generate_records("test", 4, 0)]


@pytest.mark.gpu
def test_vllm_n_samples_per_row_seeded_by_key(vllm_engine, requests_):
    full = vllm_engine.generate(requests_, SAMPLED)
    assert [len(o.texts) for o in full] == [3] * 4 and all(len(o.n_tokens) == 3 for o in full)
    part = vllm_engine.generate(requests_[1:3], SAMPLED)
    assert [o.texts for o in part] == [o.texts for o in full[1:3]]


@pytest.mark.gpu
def test_vllm_greedy_is_deterministic(vllm_engine, requests_):
    greedy = SamplingParams(max_new_tokens=16)
    a = vllm_engine.generate(requests_, greedy)
    b = vllm_engine.generate(list(reversed(requests_)), greedy)
    assert [o.texts for o in a] == [o.texts for o in reversed(b)]


@pytest.mark.gpu
def test_vllm_overlong_prompt_is_skipped_not_truncated(vllm_engine, requests_):
    long = GenerationRequest("How many objects? " * 400, requests_[0].image, "long/1")
    out = vllm_engine.generate([long, requests_[0]], SAMPLED)
    assert out[0].texts == [] and "max_prompt_tokens" in out[0].error
    assert len(out[1].texts) == 3


@pytest.mark.gpu
def test_vllm_serves_a_lora_adapter_through_lora_request(tiny_model_dir, tmp_path, requests_):
    pytest.importorskip("vllm")
    from peft import LoraConfig, get_peft_model

    from r3v_ray.models import load_model, load_processor

    model = get_peft_model(load_model(tiny_model_dir), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    load_processor(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    engine = create_engine("vllm", str(tmp_path / "adapter"), dtype="float16", gpu_memory_utilization=0.3, max_model_len=1024)
    assert engine.lora_request is not None
    out = engine.generate(requests_[:2], SamplingParams(max_new_tokens=8))
    assert all(len(o.texts) == 1 for o in out)
