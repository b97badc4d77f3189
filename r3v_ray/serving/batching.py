"""Dynamic batching for the sampler: requests that queue behind a busy engine share its next call (EngineQueue),
and within a call requests with the same sampling parameters share one engine.generate (generate_grouped). Rows
are seeded by (seed, key, sample index), so batching never changes what a request gets, and neither does falling
back to one call per request."""

from __future__ import annotations

import asyncio
import logging
import time

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


class EngineQueue:
    """Requests to one engine, batched only when they have to wait anyway. A request that finds the engine idle,
    with no load before it, starts at once (no batching wait); the requests that arrive while an engine call runs
    form the next batch (up to `max_batch_size`), so under load requests still share engine calls.

    Under load (the last call carried more than one request and ended less than `wait_s` ago) a new batch waits up
    to `wait_s` for as many requests as that call carried: concurrent clients arrive spread over a few ms, and the
    first of them would otherwise take the engine alone and leave the rest for a second call that pays the fixed
    cost of a generation (its decoding steps) again. A lone request never waits.

    `run(items) -> results` blocks (it runs in a worker thread so the event loop keeps answering, health checks
    included) and returns one result per item, in order; an exception it raises is raised to every request of that
    batch and no other (generate_grouped never raises: it isolates each request's failure itself).
    """

    def __init__(self, run, max_batch_size: int, wait_s: float = 0.0):
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.busy = False
        self.last_size, self.last_end = 0, float("-inf")  # the last engine call: requests and when it ended
        self.batches = self.items = 0  # engine calls so far and the requests they carried
        self._arrived: asyncio.Event | None = None

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((item, future))
        if self._arrived is not None:
            self._arrived.set()
        if not self.busy:
            self.busy = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                await self._gather()
                batch = self._take()
                if not batch:
                    continue
                self.batches, self.items = self.batches + 1, self.items + len(batch)
                try:
                    results = await asyncio.to_thread(self.run, [item for item, _ in batch])
                except Exception as exc:  # raised for this batch's requests alone; the queue goes on
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results):
                        if not future.done():  # a request whose client went away has been cancelled
                            future.set_result(result)
                self.last_size, self.last_end = len(batch), time.monotonic()
        finally:
            self.busy = False

    async def _gather(self) -> None:
        """Under load, wait (at most wait_s) until as many requests are queued as the last call carried."""
        if self.wait_s <= 0 or self.last_size <= 1:
            return
        deadline = self.last_end + self.wait_s
        want = min(self.last_size, self.max_batch_size)
        while len(self.pending) < want and (left := deadline - time.monotonic()) > 0:
            self._arrived = asyncio.Event()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass
            finally:
                self._arrived = None

    def _take(self) -> list:
        live = [(item, f) for item, f in self.pending if not f.done()]
        batch, self.pending = live[: self.max_batch_size], live[self.max_batch_size:]
        return batch
