"""The ingress's HTTP surface: a FastAPI app built per replica from the deployment's settings.

Built at replica start (Ray Serve calls the ingress's `__serve_build_asgi_app__`), so the settings decide what
it has: the API-key gate (serving/auth.py) in front of every route but /healthz, the /docs page only when
`serve.docs` is on (its assets come from a CDN), every error (404 and 405 included) in the OpenAI error shape.
The routes read the body themselves (serving/parsing.py reads it incrementally, against the size limits), so the
request bodies are added to the OpenAPI schema from their models rather than from the route signatures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from r3v_ray.serving import responses
from r3v_ray.serving.auth import OPEN_PATHS, KeyCheck
from r3v_ray.serving.errors import RequestError, unauthorized
from r3v_ray.serving.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    ModelList,
    SelectionResponse,
    SelectRequest,
)

if TYPE_CHECKING:
    from r3v_ray.serving.deployments import Ingress

TITLE = "r3v-ray best-of-N self-selection"
BODIES = {"/v1/select": SelectRequest, "/v1/chat/completions": ChatCompletionRequest}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ((400, "a bad request, naming the field"), (401, "missing or invalid API key"),
                         (404, "unknown model or route"), (408, "the body did not arrive in time"),
                         (413, "a body or image over its limit"),
                         (429, "too many bodies being received from this client"), (500, "internal error"),
                         (503, "no model replica available, or too many bodies being received; retry"))
}


def error_response(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status in (408, 413):  # the rest of the body is not read: the connection goes with the answer
        headers = {"Connection": "close"}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


class KeyGate:
    """ASGI middleware: without a valid `Authorization: Bearer` key, 401 for every path but the open ones."""

    def __init__(self, app, check: KeyCheck):
        self.app, self.check = app, check

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.check.required and _route_path(scope) not in OPEN_PATHS:
            header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
            if not self.check.allows(header.decode("latin-1")):
                await error_response(unauthorized())(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


def create_app(ingress: "Ingress", docs: bool, check: KeyCheck) -> FastAPI:
    # /docs loads Swagger UI from a CDN (FastAPI's default), so it is opt-in; the schema itself is always here.
    app = FastAPI(title=TITLE, docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(KeyGate, check=check)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(RequestError(None, str(exc.detail), exc.status_code, code))

    @app.post("/v1/select", response_model=SelectionResponse, responses=ERRORS,
              summary="best-of-N selection in r3v's own shape")
    async def select(http: Request) -> JSONResponse:
        return await ingress.answer(http, ingress.parse_select, responses.select_body)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS,
              summary="OpenAI chat completion; the selection under `selection`")
    async def chat_completions(http: Request) -> JSONResponse:
        return await ingress.answer(http, ingress.parse_chat, responses.chat_body)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    async def models() -> JSONResponse:
        return JSONResponse(responses.models_body(ingress.model).model_dump(mode="json"))

    @app.get("/healthz", response_model=Health, responses={503: ERRORS[503]},
             summary="200 when a model replica answers within a few seconds (no key needed)")
    async def healthz() -> JSONResponse:
        return await ingress.healthz()

    app.openapi = lambda: openapi_schema(app, check.required)  # type: ignore[method-assign]
    return app


def openapi_schema(app: FastAPI, keys: bool) -> dict[str, Any]:
    """FastAPI's schema of the routes, plus the request bodies (from their models) and the bearer scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version="1", routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in BODIES.values()],
                                 ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {})
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault("schemas", {}).setdefault(name, definition)
    for path, model in BODIES.items():
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    if keys:
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for path, item in schema["paths"].items():
            if path not in OPEN_PATHS:
                for operation in item.values():
                    operation["security"] = [{"apiKey": []}]
    app.openapi_schema = schema
    return schema
