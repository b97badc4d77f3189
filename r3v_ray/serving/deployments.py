"""The two Ray Serve deployments, thin: `R3VSampler` holds the engine, `R3VIngress` speaks HTTP.

The ingress parses and validates a request (serving/parsing.py), runs the selection (serving/selector.py) with
the sampler's deployment handle as its `generate`, and shapes the answer (serving/responses.py). A bad request
is a RequestError -> 4xx; a sampler replica that is gone is a 503 (Serve replaces it); anything else is a bug.
"""

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from r3v_ray.cache import localize
from r3v_ray.config import ServeConfig
from r3v_ray.engines import GenerationRequest, RequestOutput, SamplingParams, create_engine
from r3v_ray.serving import batching, parsing, responses
from r3v_ray.serving.errors import RequestError
from r3v_ray.serving.selector import run_selection
from r3v_ray.tasks import get_task

log = logging.getLogger(__name__)
SAMPLER_UNAVAILABLE = (RayActorError, ActorDiedError, ActorUnavailableError, BackPressureError)
HEALTH_TIMEOUT_S = 5.0


@serve.deployment(name="R3VSampler")
class Sampler:
    """One engine per replica. Concurrent calls are batched (serve.batch) and run off the event loop."""

    def __init__(self, checkpoint_uri: str, engine: str, engine_kwargs: dict[str, Any], max_batch_size: int,
                 batch_wait_timeout_s: float, storage: dict[str, Any] | None = None):
        self.checkpoint = checkpoint_uri
        # A checkpoint under a URI is read from this node's copy (r3v_ray/cache.py, storage.cache_*).
        self.engine = create_engine(engine, localize(checkpoint_uri, storage), **engine_kwargs)
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches = self.items = 0  # how well concurrent requests are batched (see info())

    async def generate(self, request: GenerationRequest, params: SamplingParams) -> RequestOutput:
        return await self.generate_batch((request, params))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def generate_batch(self, items: list[tuple[GenerationRequest, SamplingParams]]) -> list[RequestOutput]:
        self.batches, self.items = self.batches + 1, self.items + len(items)
        # The engine blocks: a worker thread keeps this replica's event loop answering health checks meanwhile.
        return await asyncio.to_thread(batching.generate_grouped, self.engine, items)

    def info(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "pid": os.getpid(), "batches": self.batches, "items": self.items}


app = FastAPI(title="r3v-ray best-of-N self-selection", docs_url="/docs")


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@serve.deployment(name="R3VIngress")
@serve.ingress(app)
class Ingress:
    def __init__(self, sampler: DeploymentHandle, settings: dict[str, Any]):
        self.sampler = sampler
        self.cfg = ServeConfig.model_validate(settings["serve"])
        self.task = get_task(settings["task"], **settings.get("task_params", {}))
        self.model = {**settings["model"], "created": int(time.time())}
        self.model_id = self.model["id"]

    async def _generate(self, request: GenerationRequest, params: SamplingParams) -> RequestOutput:
        return await self.sampler.generate.remote(request, params)

    async def _handle(self, http: Request, parse, shape) -> JSONResponse:
        try:
            length = int(http.headers.get("content-length") or 0)
            if length > parsing.max_body_bytes(self.cfg):
                raise RequestError(None, f"request body of {length} bytes is over the limit of {parsing.max_body_bytes(self.cfg)}", 413, "too_large")
            body = parsing.parse_json_body(await http.body(), self.cfg)
            query = parse(body)
            selection = await run_selection(self.task, query, self._generate)
            return JSONResponse(shape(selection, self.model_id))
        except RequestError as exc:
            return _error(exc)
        except SAMPLER_UNAVAILABLE as exc:
            log.warning("sampler unavailable: %s", exc)
            return _error(RequestError(None, f"the model replica is unavailable ({type(exc).__name__}); retry shortly", 503, "unavailable"))

    @app.post("/v1/select")
    async def select(self, http: Request) -> JSONResponse:
        return await self._handle(http, lambda body: parsing.parse_select(body, self.cfg), responses.select_body)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, http: Request) -> JSONResponse:
        return await self._handle(http, lambda body: parsing.parse_chat(body, self.cfg, self.model_id), responses.chat_body)

    @app.get("/v1/models")
    async def models(self) -> dict:
        return responses.models_body(self.model)

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when a sampler replica answers within a few seconds, else 503."""
        try:
            await asyncio.wait_for(self.sampler.info.remote(), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, *SAMPLER_UNAVAILABLE) as exc:
            return _error(RequestError(None, f"no model replica answered ({type(exc).__name__})", 503, "unavailable"))
        return JSONResponse({"status": "ok", "model": self.model_id})
