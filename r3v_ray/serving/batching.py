"""Dynamic batching helper for the sampler: concurrent requests with the same sampling parameters share one
engine call. Rows are seeded by (seed, key, sample index), so batching never changes what a request gets."""

from __future__ import annotations

from r3v_ray.engines import Engine, GenerationRequest, RequestOutput, SamplingParams


def generate_grouped(engine: Engine, items: list[tuple[GenerationRequest, SamplingParams]]) -> list[RequestOutput]:
    """One output per item, in order; one engine.generate per distinct SamplingParams.

    If a group's call raises ValueError (input the engine refuses), its items are retried one by one, so only
    the offending request fails (with RequestOutput.error set) and its batch neighbours are unharmed.
    """
    groups: dict[SamplingParams, list[int]] = {}
    for i, (_, params) in enumerate(items):
        groups.setdefault(params, []).append(i)
    outputs: list[RequestOutput | None] = [None] * len(items)
    for params, indices in groups.items():
        try:
            outs = engine.generate([items[i][0] for i in indices], params)
        except ValueError:
            outs = [_generate_one(engine, items[i][0], params) for i in indices]
        for i, out in zip(indices, outs):
            outputs[i] = out
    return outputs  # type: ignore[return-value]


def _generate_one(engine: Engine, request: GenerationRequest, params: SamplingParams) -> RequestOutput:
    try:
        return engine.generate([request], params)[0]
    except ValueError as exc:
        return RequestOutput(error=f"the engine refused this input ({exc})")
