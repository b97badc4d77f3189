"""The vLLM engine: its settings and input building (main suite, no vllm needed), and the real engine (marked
`vllm`: run by `make test-vllm` in .venv-vllm on CPU, or where there is a GPU), one engine shared by the module."""

from __future__ import annotations

import ast
import json
import multiprocessing
from pathlib import Path

import pytest
from PIL import Image

import r3v_ray
from r3v_ray.config import RunConfig
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.engines.base import row_seed
from r3v_ray.engines.cpu_cores import claim_cores
from r3v_ray.engines.settings import engine_kwargs
from r3v_ray.engines.vllm_engine import (
    cpu_env,
    length_error,
    llm_settings,
    resolve_lora,
    vllm_input,
    vllm_sampling_kwargs,
)
from r3v_ray.cluster.resources import sampler_remote_args, serve_actor_options
from r3v_ray.tasks import get_task

SAMPLED = SamplingParams(n=3, temperature=0.9, top_p=0.95, top_k=0, max_new_tokens=16, seed=11)
GREEDY = SamplingParams(max_new_tokens=16)
MAX_MODEL_LEN = 256  # the engine's context here: the synthetic prompts (83-92 tokens with the image) fit
TASK = get_task("synthetic")


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
        "detokenize": False,  # the engine decodes the ids with the model's tokenizer, as the hf engine does
        "seed": row_seed(11, "q1/1", 0),
        "stop_token_ids": [5],
    }
    assert vllm_sampling_kwargs(SAMPLED, "q1/1")["seed"] == a["seed"]  # stable for a key
    assert vllm_sampling_kwargs(SAMPLED, "q2/1")["seed"] != a["seed"]  # independent of batch neighbours
    assert vllm_sampling_kwargs(SamplingParams(**{**SAMPLED.__dict__, "top_k": 50}), "q1/1")["top_k"] == 50


def test_greedy_kwargs_are_really_greedy():
    kw = vllm_sampling_kwargs(SamplingParams(max_new_tokens=7), "q1/0")
    assert kw == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 7, "detokenize": False}


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


def test_the_cpu_engine_starts_in_one_process_eagerly_and_the_gpu_engine_compiled():
    cpu = llm_settings("m", on_cpu=True, dtype="float32", seed=3, cpu_kv_cache_gib=0.5, max_model_len=512)
    assert cpu["distributed_executor_backend"] == "uni" and cpu["enforce_eager"] is True
    assert cpu["kv_cache_memory_bytes"] == 1 << 29 and cpu["max_model_len"] == 512
    assert cpu["limit_mm_per_prompt"] == {"image": 1, "video": 0}  # no dummy videos at start-up
    gpu = llm_settings("m", on_cpu=False, dtype="bfloat16", seed=3, tensor_parallel_size=2, enable_lora=True,
                       max_lora_rank=16)
    assert gpu["enforce_eager"] is False and "distributed_executor_backend" not in gpu
    assert "kv_cache_memory_bytes" not in gpu and "max_model_len" not in gpu  # the model's own context
    assert (gpu["tensor_parallel_size"], gpu["enable_lora"], gpu["max_lora_rank"]) == (2, True, 16)
    assert llm_settings("m", on_cpu=True, dtype="float32", seed=0, enforce_eager=False)["enforce_eager"] is False
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs GPUs"):
        llm_settings("m", on_cpu=True, dtype="float32", seed=0, tensor_parallel_size=2)
    assert cpu_env([2, 3]) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "2,3",
                               "OMP_NUM_THREADS": "2"}
    assert cpu_env([]) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_prompts_are_skipped_by_the_engines_context_as_well_as_max_prompt_tokens():
    assert length_error(100, 2048, 256) is None
    assert "max_prompt_tokens 2048" in length_error(3000, 2048, 4096)
    # shorter than max_prompt_tokens but no room to answer within the engine's context: vLLM would refuse it
    assert "max_model_len 256" in length_error(256, 2048, 256)
    assert "max_model_len 256" in length_error(300, 2048, 256)


def test_a_cpu_vllm_actor_asks_ray_for_cpus_only_and_a_gpu_one_for_gpus():
    cfg = RunConfig()
    assert "tensor_parallel_size" not in engine_kwargs(cfg)  # hf
    cfg.sampling.engine = "vllm"
    kw = engine_kwargs(cfg)  # no GPUs asked for: a CPU engine on a core of its own
    assert kw["cpu_cores"] == 1 and kw["cpu_kv_cache_gib"] == 1.0 and kw["tensor_parallel_size"] == 1
    assert sampler_remote_args(cfg) == {"num_cpus": 1.0, "num_gpus": 0.0}
    cfg.resources.cpus_per_sampler = 2.5
    assert engine_kwargs(cfg)["cpu_cores"] == 2
    cfg.sampling.tensor_parallel_size = 2
    with pytest.raises(ValueError, match="needs GPUs"):
        engine_kwargs(cfg)
    cfg.sampling.tensor_parallel_size = 1
    cfg.resources.gpus_per_sampler = 0.5  # two tp=1 engines may share a GPU
    kw = engine_kwargs(cfg)
    assert "cpu_cores" not in kw and kw["tensor_parallel_size"] == 1
    assert sampler_remote_args(cfg)["num_gpus"] == 0.5
    cfg.sampling.tensor_parallel_size = 2
    with pytest.raises(ValueError, match="resources.gpus_per_sampler >= 2"):
        engine_kwargs(cfg)
    cfg.resources.gpus_per_sampler = 2
    kw = engine_kwargs(cfg)
    assert (kw["tensor_parallel_size"], kw["gpu_memory_utilization"], kw["max_prompt_tokens"]) == (2, 0.85, 2048)
    # Serving builds its engine from the same settings, with the replica's resources.
    served = RunConfig()
    served.serve.engine = "vllm"
    assert engine_kwargs(served, "serve")["cpu_cores"] == 1
    assert serve_actor_options(served)["num_gpus"] == 0.0
    served.serve.gpus_per_replica = 1
    assert "cpu_cores" not in engine_kwargs(served, "serve")


def _claim_in_child(scope: str, count: int, conn) -> None:
    conn.send(claim_cores(count, scope=scope, allowed=[0, 1, 2]))
    conn.recv()  # hold the claim until the parent has claimed too


def test_engines_of_one_node_claim_cores_of_their_own_until_they_end(tmp_path):
    scope = f"test-{tmp_path.name}"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_claim_in_child, args=(scope, 2, child))
    proc.start()
    try:
        assert parent.recv() == [0, 1]
        assert claim_cores(2, scope=scope, allowed=[0, 1, 2]) == [2]  # only what is left
        assert claim_cores(1, scope="another-node", allowed=[0, 1, 2]) == [0]  # another Ray node claims apart
    finally:
        parent.send("done")
        proc.join(30)
    # the child's cores are free once it has ended (a killed actor frees its cores the same way)
    assert claim_cores(2, scope=scope, allowed=[0, 1, 2]) == [0, 1]


# -- the real engine ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    engine = create_engine("vllm", tiny_model_dir, dtype="float32", max_model_len=MAX_MODEL_LEN,
                           cpu_kv_cache_gib=0.25, gpu_memory_utilization=0.3)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    return create_engine("hf", tiny_model_dir, torch_threads=1)


@pytest.fixture(scope="module")
def requests_():
    return [GenerationRequest(TASK.cot_prompt(r), TASK.render(r), f"{r.id}/1") for r in TASK.generate_records("test", 4, 0)]


@pytest.mark.vllm
def test_vllm_n_samples_per_row_seeded_by_key(vllm_engine, requests_):
    full = vllm_engine.generate(requests_, SAMPLED)
    assert [len(o.texts) for o in full] == [3] * 4 and all(len(o.n_tokens) == 3 for o in full)
    assert all(len(set(o.texts)) == 3 for o in full)  # three samples, not one three times
    part = vllm_engine.generate(requests_[1:3], SAMPLED)
    assert [o.texts for o in part] == [o.texts for o in full[1:3]]  # whatever the batch
    other_seed = vllm_engine.generate(requests_[1:2], SamplingParams(**{**SAMPLED.__dict__, "seed": 12}))
    assert other_seed[0].texts != full[1].texts


@pytest.mark.vllm
def test_vllm_greedy_is_deterministic_and_equals_the_hf_engine(vllm_engine, hf_engine, requests_):
    rows = requests_ + [GenerationRequest("What is 2 + 3?", None, "text-only/1")]
    a = vllm_engine.generate(rows, GREEDY)
    b = vllm_engine.generate(list(reversed(rows)), GREEDY)
    assert [o.texts for o in a] == [o.texts for o in reversed(b)]
    # The same model, the same image processing, the same argmax: vLLM and transformers agree token for token.
    hf = hf_engine.generate(rows, GREEDY)
    assert [(o.texts, o.n_tokens) for o in a] == [(o.texts, o.n_tokens) for o in hf]


@pytest.mark.vllm
def test_vllm_the_image_changes_the_answer(vllm_engine, requests_):
    prompt = requests_[0].prompt
    same_text = [GenerationRequest(prompt, r.image, "same/1") for r in requests_]
    out = vllm_engine.generate(same_text + same_text[:1], GREEDY)
    assert len({o.texts[0] for o in out[:4]}) > 1  # only the image differs between these rows
    assert out[4].texts == out[0].texts
    assert vllm_engine.generate([GenerationRequest(prompt, None, "same/1")], GREEDY)[0].texts != out[0].texts


@pytest.mark.vllm
def test_vllm_overlong_prompt_is_skipped_by_the_engines_context_limit(vllm_engine, requests_):
    long = GenerationRequest("How many objects? " * 60, requests_[0].image, "long/1")
    assert vllm_engine.max_prompt_tokens >= vllm_engine.prompt_tokens(long) > vllm_engine.max_model_len
    out = vllm_engine.generate([long, requests_[0]], SAMPLED)
    assert out[0].texts == [] and f"max_model_len {MAX_MODEL_LEN}" in out[0].error
    assert out[1].texts == vllm_engine.generate([requests_[0]], SAMPLED)[0].texts


@pytest.mark.vllm
def test_vllm_a_row_it_refuses_is_skipped_and_never_fails_its_batch(vllm_engine, requests_):
    expected = [o.texts for o in vllm_engine.generate(requests_, SAMPLED)]
    # An image the processor refuses (aspect ratio over 200) is skipped up front with the processor's reason.
    wide = GenerationRequest(requests_[0].prompt, Image.new("RGB", (4000, 10)), "wide/1")
    out = vllm_engine.generate([requests_[0], wide, requests_[1]], SAMPLED)
    assert "aspect ratio" in out[1].error and not out[1].texts
    assert [out[0].texts, out[2].texts] == expected[:2]
    # A row that passes our own length rule but that vLLM refuses (here: the rule told a larger context than the
    # engine's) fails vLLM's whole batch; the engine then runs the rows alone and skips only that one.
    long = GenerationRequest("How many objects? " * 60, requests_[0].image, "long/1")
    limit = vllm_engine.max_model_len
    vllm_engine.max_model_len = 10**6
    try:
        out = vllm_engine.generate([requests_[0], long] + requests_[1:], SAMPLED)
    finally:
        vllm_engine.max_model_len = limit
    assert out[1].texts == [] and "vLLM refused this row" in out[1].error and "maximum context length" in out[1].error
    assert [o.texts for o in out[:1] + out[2:]] == expected


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter of the tiny model with random (not zero) weights, so that it changes what the model says."""
    from peft import LoraConfig, get_peft_model

    from r3v_ray.models import load_model, load_processor

    out = tmp_path_factory.mktemp("lora") / "adapter"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_model(tiny_model_dir), lora).save_pretrained(out)
    load_processor(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def lora_engine(vllm_engine, adapter_dir):
    # Engines of one process share vLLM's distributed state, so this one is closed with (before) the module's.
    engine = create_engine("vllm", adapter_dir, dtype="float32", max_model_len=MAX_MODEL_LEN, cpu_kv_cache_gib=0.25,
                           gpu_memory_utilization=0.3, max_lora_rank=8)
    yield engine
    engine.close()


@pytest.mark.vllm
def test_vllm_serves_a_lora_adapter_through_lora_request(vllm_engine, lora_engine, adapter_dir, requests_):
    assert lora_engine.lora_request is not None and lora_engine.lora_request.lora_path == adapter_dir
    out = lora_engine.generate(requests_[:2], GREEDY)
    assert [o.texts for o in out] != [o.texts for o in vllm_engine.generate(requests_[:2], GREEDY)]
    # base + LoRARequest in vLLM says what the merged adapter says in transformers
    merged = create_engine("hf", adapter_dir, torch_threads=1).generate(requests_[:2], GREEDY)
    assert [o.texts for o in out] == [o.texts for o in merged]


@pytest.mark.vllm
@pytest.mark.gpu
def test_vllm_tensor_parallel_engine_says_what_one_gpu_says(tiny_model_dir, requests_):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("tensor parallelism needs 2 CUDA GPUs")
    kw = dict(dtype="float32", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.3)
    one = create_engine("vllm", tiny_model_dir, **kw)
    expected = [o.texts for o in one.generate(requests_, GREEDY)]
    one.close()
    two = create_engine("vllm", tiny_model_dir, tensor_parallel_size=2, **kw)
    try:
        assert [o.texts for o in two.generate(requests_, GREEDY)] == expected
    finally:
        two.close()
