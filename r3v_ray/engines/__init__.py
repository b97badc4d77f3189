"""Inference engines behind one interface (r3v_ray/engines/base.py): `hf` (transformers, CPU default) and `vllm`
(GPU, imported lazily)."""

from r3v_ray.engines.base import Engine, GenerationRequest, RequestOutput, SamplingParams

__all__ = ["Engine", "GenerationRequest", "RequestOutput", "SamplingParams", "create_engine"]


def create_engine(kind: str, model_path: str, **kwargs) -> Engine:
    if kind == "hf":
        from r3v_ray.engines.hf import HFEngine

        return HFEngine(model_path, **kwargs)
    if kind == "vllm":
        from r3v_ray.engines.vllm_engine import VLLMEngine  # vllm is imported only here

        return VLLMEngine(model_path, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; use 'hf' or 'vllm'")
