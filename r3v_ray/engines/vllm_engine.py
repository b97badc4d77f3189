"""The vLLM engine (GPU): offline `LLM.generate` with multi-modal inputs, per-row seeds and LoRA adapters.

vllm is imported only inside `VLLMEngine.__init__`, so this module imports on any machine. The pure part,
turning one GenerationRequest plus our SamplingParams into vLLM's input dict and SamplingParams kwargs, lives in
module-level functions that the CPU tests exercise without vllm.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from r3v_ray.engines.base import Engine, GenerationRequest, RequestOutput, SamplingParams, row_seed
from r3v_ray.models import chat_prompt
from r3v_ray.models.processor import load_processor

log = logging.getLogger(__name__)


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
    batch or actor it landed in. Greedy is temperature 0 with n=1 and no filters: vLLM then takes the argmax.
    """
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens}
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
        torch_threads: int | None = None,  # accepted for a common engine signature; vLLM runs on the GPU
        **kw,
    ):
        from vllm import LLM  # the GPU-only dependency, imported here and nowhere else

        base, self.lora_path, enable_lora = resolve_lora(model_path, lora_path, enable_lora)
        if self.lora_path is not None:
            rank = adapter_rank(self.lora_path)
            if rank is not None and rank > max_lora_rank:
                raise ValueError(f"{self.lora_path}: adapter rank {rank} > max_lora_rank {max_lora_rank}")
        # Our own processor counts prompt tokens (image tokens included) to skip over-long rows up front:
        # one over-long prompt would otherwise fail the whole vLLM batch.
        self.processor = load_processor(base, min_pixels=min_pixels, max_pixels=max_pixels)
        self.max_prompt_tokens = max_prompt_tokens
        self.stop_token_ids = [self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        llm_kwargs: dict[str, Any] = dict(
            model=base,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            limit_mm_per_prompt={"image": 1},
            enable_lora=enable_lora,
        )
        if enable_lora:
            llm_kwargs["max_lora_rank"] = max_lora_rank
        if mm_kwargs:
            llm_kwargs["mm_processor_kwargs"] = mm_kwargs
        llm_kwargs.update(kw)
        self.llm = LLM(**llm_kwargs)
        self.lora_request = None
        if self.lora_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("r3v-adapter", 1, self.lora_path)

    def prompt_tokens(self, request: GenerationRequest) -> int:
        text = chat_prompt(self.processor, request.prompt, request.image is not None)
        images = {"images": [request.image]} if request.image is not None else {}
        return int(self.processor(text=[text], return_tensors="pt", **images)["input_ids"].shape[1])

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[RequestOutput]:
        from vllm import SamplingParams as VLLMSamplingParams

        outputs = [RequestOutput() for _ in requests]
        prompts, sampling, index = [], [], []
        for i, req in enumerate(requests):
            length = self.prompt_tokens(req)
            if length > self.max_prompt_tokens:
                outputs[i].error = f"prompt has {length} tokens > max_prompt_tokens {self.max_prompt_tokens}"
                continue
            text = chat_prompt(self.processor, req.prompt, req.image is not None)
            prompts.append(vllm_input(text, req.image))
            sampling.append(VLLMSamplingParams(**vllm_sampling_kwargs(params, req.key, self.stop_token_ids)))
            index.append(i)
        if not prompts:
            return outputs
        results = self.llm.generate(prompts, sampling, lora_request=self.lora_request, use_tqdm=False)
        for i, result in zip(index, results):
            for completion in result.outputs:
                outputs[i].texts.append(completion.text)
                outputs[i].n_tokens.append(len(completion.token_ids))
        return outputs
