"""The two Ray Serve deployments, thin: `R3VSampler` holds the engine and runs the selection, `R3VIngress` speaks
HTTP.

The ingress reads and validates a request (serving/parsing.py), hands the query to a sampler replica in one
deployment-handle call, and shapes the answer (serving/responses.py); its routes are built per replica from the
settings (serving/routes.py). The replica runs the selection (serving/selector.py) against its own engine queue:
the candidates and the self-select pass are two engine calls but one handle crossing (what a crossing costs:
docs/serving.md). A bad request is a RequestError -> 4xx; a sampler
replica that is gone is a 503 (Serve replaces it); anything else fails that request alone with a 500.
"""

import asyncio
import logging
import os
import time
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from r3v_ray.run.cache import localize
from r3v_ray.config import ServeConfig
from r3v_ray.engines import GenerationRequest, RequestOutput, SamplingParams, create_engine
from r3v_ray.serving import batching, parsing, routes
from r3v_ray.serving.auth import KeyCheck
from r3v_ray.serving.errors import RequestError, internal
from r3v_ray.serving.parsing import Query
from r3v_ray.serving.schemas import Health
from r3v_ray.serving.selector import Selection, run_selection
from r3v_ray.tasks import get_task

log = logging.getLogger(__name__)
SAMPLER_UNAVAILABLE = (RayActorError, ActorDiedError, ActorUnavailableError, BackPressureError)
HEALTH_TIMEOUT_S = 5.0


@serve.deployment(name="R3VSampler")
class Sampler:
    """One engine per replica. A request that finds the engine idle goes straight to it; those that arrive while it
    is busy share its next call (serving/batching.py EngineQueue), which runs off the event loop."""

    def __init__(self, checkpoint_uri: str, engine: str, engine_kwargs: dict[str, Any], max_batch_size: int,
                 batch_wait_timeout_s: float, storage: dict[str, Any] | None, task: str, task_params: dict[str, Any]):
        self.checkpoint = checkpoint_uri
        self.task = get_task(task, **task_params)  # the selection runs here: prompts and answer scoring
        # A checkpoint under a URI is read from this node's copy (r3v_ray/run/cache.py, storage.cache_*).
        self.engine = create_engine(engine, localize(checkpoint_uri, storage), **engine_kwargs)
        self.queue = batching.EngineQueue(partial(batching.generate_grouped, self.engine), max_batch_size,
                                          batch_wait_timeout_s)

    async def generate(self, request: GenerationRequest, params: SamplingParams) -> RequestOutput:
        out = await self.queue.submit((request, params))
        if isinstance(out, Exception):  # this request's own failure (batching.generate_grouped); others are unharmed
            raise out
        return out

    async def prompt_tokens(self, request: GenerationRequest) -> int:
        # In a worker thread: the processor runs over the image. It encodes as the engine's own calls do (same
        # padding settings), so it leaves the tokenizer's state alone while an engine call runs beside it.
        return await asyncio.to_thread(self.engine.prompt_tokens, request)

    async def select(self, query: Query) -> Selection | RequestError:
        """The whole best-of-N selection for one query. The request's own fault comes back as a RequestError value
        (not raised), so the ingress answers it as that status without unwrapping a Ray error."""
        try:
            return await run_selection(self.task, query, self.generate, self.prompt_tokens,
                                       getattr(self.engine, "max_prompt_tokens", None))
        except RequestError as exc:
            return exc

    def info(self) -> dict[str, Any]:
        import ray

        return {"checkpoint": self.checkpoint, "pid": os.getpid(), "node_ip": ray.util.get_node_ip_address(),
                "batches": self.queue.batches, "items": self.queue.items}


@serve.deployment(name="R3VIngress")
@serve.ingress()
class Ingress:
    def __init__(self, sampler: DeploymentHandle, settings: dict[str, Any]):
        self.sampler = sampler
        self.cfg = ServeConfig.model_validate(settings["serve"])
        self.keys = KeyCheck(settings.get("api_key_digests", []))
        self.model = {**settings["model"], "created": int(time.time())}
        self.model_id = self.model["id"]
        self.select_max_new_tokens = settings["select_max_new_tokens"]  # evaluation's, so it answers as Select@N
        self.decodes = asyncio.Semaphore(self.cfg.max_concurrent_decodes)
        self.bodies = parsing.BodySlots(self.cfg.max_body_readers, self.cfg.max_body_readers_per_client)

    def __serve_build_asgi_app__(self):
        return routes.create_app(self, docs=self.cfg.docs, check=self.keys)

    def parse_select(self, body: dict) -> Query:
        return parsing.parse_select(body, self.cfg, self.select_max_new_tokens)

    def parse_chat(self, body: dict) -> Query:
        return parsing.parse_chat(body, self.cfg, self.model_id, self.model.get("aliases", ()),
                                  self.select_max_new_tokens)

    async def _parse(self, parse, raw: bytes) -> Query:
        """The body as a query, its image decoded (and reduced) here, once: at most serve.max_concurrent_decodes
        at a time, each in a worker thread so the event loop keeps answering (/healthz among others)."""
        async with self.decodes:
            return await asyncio.to_thread(lambda: parse(parsing.parse_json_body(raw, self.cfg)))

    async def _select(self, query: Query) -> Selection:
        t0 = time.perf_counter()
        result = await self.sampler.select.remote(query)
        if isinstance(result, RequestError):
            raise result
        # The selection as the ingress waited for it, beside the replica's own timings: the difference is the hop.
        result.timings_ms["ingress_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        return result

    async def answer(self, http: Request, parse, shape) -> JSONResponse:
        try:
            with self.bodies.hold(http.client.host if http.client else "unknown"):
                raw = await parsing.read_body_in_time(http.stream(), http.headers.get("content-length"), self.cfg)
            query = await self._parse(parse, raw)
            selection = await self._select(query)
            return JSONResponse(shape(selection, self.model_id).model_dump(mode="json"))
        except RequestError as exc:
            return routes.error_response(exc)
        except ClientDisconnect:
            return routes.error_response(RequestError(None, "the client disconnected before sending the whole body"))
        except SAMPLER_UNAVAILABLE as exc:
            log.warning("sampler unavailable: %s", exc)
            return routes.error_response(RequestError(None, f"the model replica is unavailable ({type(exc).__name__}); retry shortly", 503, "unavailable"))
        except Exception:
            log.exception("request failed")
            return routes.error_response(internal("answering this request"))

    async def healthz(self) -> JSONResponse:
        """200 when a sampler replica answers within a few seconds, else 503."""
        try:
            await asyncio.wait_for(self.sampler.info.remote(), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, *SAMPLER_UNAVAILABLE) as exc:
            return routes.error_response(RequestError(None, f"no model replica answered ({type(exc).__name__})", 503, "unavailable"))
        return JSONResponse(Health(model=self.model_id).model_dump())
