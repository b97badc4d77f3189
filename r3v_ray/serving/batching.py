"""Dynamic batching helper for the sampler: concurrent requests with the same sampling parameters share one
engine call. Rows are seeded by (seed, key, sample index), so batching never changes what a request gets, and
neither does falling back to one call per request."""

from __future__ import annotations

import logging

from r3v_ray.engines import Engine, GenerationRequest, RequestOutput, SamplingParams

log = logging.getLogger(__name__)
# What an engine raises for input it cannot take (a tokenizer's TypeError on odd text, vLLM's validation errors,
# an image the processor refuses): the request's fault. Anything else is the server's.
REFUSED_INPUT = (ValueError, TypeError)


def generate_grouped(engine: Engine, items: list[tuple[GenerationRequest, SamplingParams]]) -> list[RequestOutput | Exception]:
    """One result per item, in order; one engine.generate per distinct SamplingParams.

    A group whose call raises is retried one request at a time, so a failure costs only the request that caused
    it: input the engine refuses gives that request a RequestOutput with `error` set, any other failure gives it
    the exception (raised for that request alone by the caller). Its batch neighbours get their text.
    """
    groups: dict[SamplingParams, list[int]] = {}
    for i, (_, params) in enumerate(items):
        groups.setdefault(params, []).append(i)
    outputs: list[RequestOutput | Exception | None] = [None] * len(items)
    for params, indices in groups.items():
        try:
            outs: list[RequestOutput | Exception] = list(engine.generate([items[i][0] for i in indices], params))
        except Exception as exc:
            if len(indices) > 1:
                log.warning("a batch of %d requests failed (%s: %s); generating them one by one", len(indices),
                            type(exc).__name__, exc)
            outs = [_generate_one(engine, items[i][0], params) for i in indices]
        for i, out in zip(indices, outs):
            outputs[i] = out
    return outputs  # type: ignore[return-value]


def _generate_one(engine: Engine, request: GenerationRequest, params: SamplingParams) -> RequestOutput | Exception:
    try:
        return engine.generate([request], params)[0]
    except REFUSED_INPUT as exc:
        return RequestOutput(error=f"the engine refused this input ({type(exc).__name__}: {str(exc)[:300]})")
    except Exception as exc:  # not the input's fault: reported as a server error for this request only
        log.exception("generation failed for one request")
        return exc
