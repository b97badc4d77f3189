"""Request parsing, pure: raw JSON bytes -> a validated `Query`, or a RequestError naming the bad field.

Both endpoints end in the same `Query`: `/v1/select` (our own shape) and `/v1/chat/completions` (the OpenAI
shape, with image_url data URIs and the extension fields `strategy`, `top_k` and `answer_choices`).
Every limit comes from ServeConfig; nothing here touches Ray or the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from r3v_ray.config import ServeConfig
from r3v_ray.engines import SamplingParams
from r3v_ray.serving.errors import RequestError

STRATEGIES = ("self_select", "majority", "first")
MAX_TEMPERATURE = 2.0
MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses images more elongated than this
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,(?P<data>.*)$", re.S)


@dataclass
class Query:
    """One validated selection request: the question, its image, N and the strategy, and the sampling."""

    question: str
    image: Image.Image | None
    choices: list[str] | None
    strategy: str
    params: SamplingParams  # candidate sampling; params.n is N
    select_max_new_tokens: int

    @property
    def n(self) -> int:
        return self.params.n


# -- body --------------------------------------------------------------------------------------------
def max_body_bytes(cfg: ServeConfig) -> int:
    """Largest body worth reading: a base64 image at the limit plus the question and some JSON."""
    return cfg.max_image_bytes * 4 // 3 + 4 * cfg.max_question_chars + 64 * 1024


def parse_json_body(raw: bytes, cfg: ServeConfig) -> dict[str, Any]:
    if len(raw) > max_body_bytes(cfg):
        raise RequestError(None, f"request body of {len(raw)} bytes is over the limit of {max_body_bytes(cfg)}", 413, "too_large")
    if not raw.strip():
        raise RequestError(None, "empty request body; send a JSON object", code="malformed_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(None, f"malformed JSON: {exc}", code="malformed_json") from None
    if not isinstance(body, dict):
        raise RequestError(None, f"the JSON body must be an object, got {type(body).__name__}", code="malformed_json")
    return body


def _validate(model: type[BaseModel], body: dict, prefix: str = "") -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise RequestError(where, "unknown field") from None
        raise RequestError(where or None, err["msg"]) from None


# -- images --------------------------------------------------------------------------------------------
def decode_image(value: str, param: str, cfg: ServeConfig, require_data_uri: bool = False) -> Image.Image:
    """A base64 string (or a data: URI) -> RGB image, within the byte and pixel limits of the config."""
    match = _DATA_URI.match(value)
    if match:
        if match.group("mime") and not match.group("mime").startswith("image/"):
            raise RequestError(param, f"data URI has media type {match.group('mime')!r}, not an image")
        payload = match.group("data")
    elif require_data_uri:
        if value.startswith(("http://", "https://")):
            raise RequestError(param, "remote image URLs are not fetched; send the image as a data:image/...;base64 URI")
        raise RequestError(param, "expected a data:image/...;base64,<data> URI")
    else:
        payload = value
    payload = "".join(payload.split())  # base64 wrapped over lines is still base64
    if not payload:
        raise RequestError(param, "image is empty")
    approx = len(payload) * 3 // 4
    if approx > cfg.max_image_bytes:
        raise RequestError(param, f"image of about {approx} bytes is over the limit of {cfg.max_image_bytes} bytes", 413, "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(param, f"image is not valid base64 ({exc})", code="bad_base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
                raise RequestError(param, f"image of {width}x{height} pixels has an aspect ratio over {MAX_ASPECT_RATIO}")
            if width * height > cfg.max_image_pixels:
                raise RequestError(param, f"image of {width}x{height} pixels is over the limit of {cfg.max_image_pixels} pixels", 413, "image_too_large")
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(param, f"image is too large to decode ({exc})", 413, "image_too_large") from None
    except Exception as exc:  # PIL raises many unrelated types for bytes that are not an image
        raise RequestError(param, f"the decoded bytes are not a readable image ({type(exc).__name__}: {exc})", code="bad_image") from None


# -- the common query ----------------------------------------------------------------------------------
def build_query(
    cfg: ServeConfig,
    question: Any,
    image: Image.Image | None,
    choices: list[str] | None,
    n: int | None,
    strategy: str | None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    names: dict[str, str] | None = None,
) -> Query:
    """Apply defaults and limits. `names` maps our field names to the endpoint's (e.g. n -> n, max_new_tokens -> max_tokens)."""
    names = names or {}

    def fail(field: str, message: str) -> RequestError:
        return RequestError(names.get(field, field), message)

    if not isinstance(question, str) or not question.strip():
        raise fail("question", "missing or empty; send the question text")
    question = question.strip()
    if len(question) > cfg.max_question_chars:
        raise fail("question", f"{len(question)} characters is over the limit of {cfg.max_question_chars}")
    if choices is not None:
        if not choices or len(choices) > cfg.max_choices or any(not c.strip() for c in choices):
            raise fail("choices", f"must be 1 to {cfg.max_choices} non-empty strings")
    n = cfg.default_n if n is None else n
    if not 1 <= n <= cfg.max_n:
        raise fail("n", f"must be between 1 and {cfg.max_n}, got {n}")
    strategy = cfg.default_strategy if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise fail("strategy", f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    temperature = cfg.temperature if temperature is None else temperature
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise fail("temperature", f"must be between 0 and {MAX_TEMPERATURE}, got {temperature}")
    if temperature == 0.0 and n > 1:
        raise fail("temperature", f"0 (greedy) would give {n} identical candidates; use temperature > 0 or n = 1")
    top_p = cfg.top_p if top_p is None else top_p
    if not 0.0 < top_p <= 1.0:
        raise fail("top_p", f"must be in (0, 1], got {top_p}")
    top_k = cfg.top_k if top_k is None else top_k
    if top_k < 0:
        raise fail("top_k", f"must be >= 0 (0: no top-k filter), got {top_k}")
    max_new_tokens = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new_tokens <= cfg.max_new_tokens_limit:
        raise fail("max_new_tokens", f"must be between 1 and {cfg.max_new_tokens_limit}, got {max_new_tokens}")
    # No seed given: draw one and report it, so any answer can be reproduced.
    seed = secrets.randbelow(2**31) if seed is None else seed
    if not 0 <= seed < 2**63:
        raise fail("seed", f"must be in [0, 2**63), got {seed}")
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    return Query(question, image, choices, strategy, params, cfg.select_max_new_tokens)


# -- POST /v1/select -------------------------------------------------------------------------------------
class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


class SelectBody(BaseModel):
    """The /v1/select body. `image` is base64 (a data: URI is accepted too)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str | None = None
    image: str | None = None
    choices: list[str] | None = None
    n: int | None = None
    strategy: str | None = None
    sampling: _Sampling | None = None


def parse_select(body: dict[str, Any], cfg: ServeConfig) -> Query:
    req = _validate(SelectBody, body)
    # Check the cheap fields before decoding the image.
    build_query(cfg, req.question, None, req.choices, req.n, req.strategy, **_sampling_kw(req.sampling))
    image = decode_image(req.image, "image", cfg) if req.image is not None else None
    return build_query(cfg, req.question, image, req.choices, req.n, req.strategy, **_sampling_kw(req.sampling))


def _sampling_kw(sampling: _Sampling | None) -> dict[str, Any]:
    kw = sampling.model_dump() if sampling else {}
    kw["names"] = {k: f"sampling.{k}" for k in ("temperature", "top_p", "top_k", "max_new_tokens", "seed")}
    return kw


# -- POST /v1/chat/completions -----------------------------------------------------------------------------
class ChatBody(BaseModel):
    """The OpenAI fields we honour, plus extensions: `strategy`, `top_k`, `answer_choices`.

    Other OpenAI fields are ignored, except those whose meaning we cannot honour (streaming, tools), which are
    refused rather than silently dropped.
    """

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Any] | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stream: bool | None = None
    tools: list[Any] | None = None
    # extensions (the openai client sends them with extra_body={...})
    strategy: str | None = None
    top_k: int | None = None
    answer_choices: list[str] | None = None


CHAT_NAMES = {"max_new_tokens": "max_tokens", "choices": "answer_choices", "question": "messages"}


def _last_user_message(messages: list[Any]) -> tuple[int, Any]:
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if not isinstance(msg, dict):
            raise RequestError(f"messages[{i}]", "each message must be an object with role and content")
        if msg.get("role") == "user":
            return i, msg.get("content")
    raise RequestError("messages", "no message with role 'user'; the question goes in the last user message")


def chat_question(messages: Any) -> tuple[str, str | None, str]:
    """(question text, image URL or None, field name of the image) from the LAST user message.

    Earlier turns and system messages are ignored: the served prompt format is the one the model was trained on.
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages", "missing or empty; send at least one user message")
    i, content = _last_user_message(messages)
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content, None, where
    if not isinstance(content, list):
        raise RequestError(where, "must be a string or a list of content parts")
    texts, image, image_field = [], None, where
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url":
            if image is not None:
                raise RequestError(f"{where}[{j}]", "more than one image; the model reads one image per question")
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise RequestError(f"{where}[{j}].image_url.url", "missing; send a data:image/...;base64 URI")
            image, image_field = url, f"{where}[{j}].image_url.url"
        else:
            raise RequestError(f"{where}[{j}]", f"unsupported content part type {kind!r}; use 'text' or 'image_url'")
    return "\n".join(t for t in texts if t.strip()), image, image_field


def parse_chat(body: dict[str, Any], cfg: ServeConfig, model_id: str) -> Query:
    req = _validate(ChatBody, body)
    if not req.model:
        raise RequestError("model", f"missing; this server serves {model_id!r}")
    if req.model != model_id:
        raise RequestError("model", f"model {req.model!r} is not served here; this server serves {model_id!r}", 404, "model_not_found")
    if req.stream:
        raise RequestError("stream", "streaming is not supported: the answer is chosen after all candidates are drawn")
    if req.tools:
        raise RequestError("tools", "tools are not supported")
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise RequestError("max_tokens", "max_tokens and max_completion_tokens disagree; send one")
    question, image_url, image_field = chat_question(req.messages)
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    kw = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, max_new_tokens=max_new, seed=req.seed, names=CHAT_NAMES)
    build_query(cfg, question, None, req.answer_choices, req.n, req.strategy, **kw)  # cheap fields first
    image = decode_image(image_url, image_field, cfg, require_data_uri=True) if image_url is not None else None
    return build_query(cfg, question, image, req.answer_choices, req.n, req.strategy, **kw)
