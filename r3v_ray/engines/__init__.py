"""Inference engines behind one interface: `hf` (transformers, CPU default) and `vllm` (GPU, imported lazily)."""

from r3v_ray.engines.base import Engine, GenerationRequest, RequestOutput, SamplingParams, create_engine

__all__ = ["Engine", "GenerationRequest", "RequestOutput", "SamplingParams", "create_engine"]
