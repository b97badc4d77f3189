"""Request parsing, pure: body bytes -> a validated `Query`, or a RequestError naming the bad field.

Both endpoints end in the same `Query`: `/v1/select` (our own shape) and `/v1/chat/completions` (the OpenAI
shape, with image_url data URIs and the extension fields `strategy`, `top_k` and `answer_choices`); the bodies
are the models of serving/schemas.py. Every size is checked before anything is tokenized: the body while it is
read, JSON nesting and text validity when it is parsed, each text's length when the query is built. Every limit
comes from ServeConfig; nothing here touches Ray or the model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, AsyncIterator, Iterator, Sequence, TypeVar

from PIL import Image
from pydantic import BaseModel, ValidationError

from r3v_ray.tasks import imaging
from r3v_ray.config import ServeConfig
from r3v_ray.engines import SamplingParams
from r3v_ray.serving.errors import RequestError
from r3v_ray.serving.schemas import (
    STRATEGIES,
    ChatCompletionRequest,
    ChatMessage,
    ImageURL,
    SamplingOptions,
    SelectRequest,
    TextPart,
)

M = TypeVar("M", bound=BaseModel)
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
    # The self-select answer's token budget: the served run's evaluation.select_budget (the Ingress passes it), so the
    # endpoint decodes its answer as Select@N did; None (a caller without a run config): the candidates' budget.
    select_max_new_tokens: int | None = None

    @property
    def select_budget(self) -> int:
        return self.select_max_new_tokens or self.params.max_new_tokens

    @property
    def n(self) -> int:
        return self.params.n


# -- body --------------------------------------------------------------------------------------------
def max_body_bytes(cfg: ServeConfig) -> int:
    """Largest body worth reading: a base64 image at the limit, the texts at theirs (6 bytes a character, a JSON
    escape's worst case), and some JSON."""
    return cfg.max_image_bytes * 4 // 3 + 6 * cfg.max_prompt_chars + 64 * 1024


def _too_large(size: str, limit: int) -> RequestError:
    return RequestError(None, f"request body of {size} bytes is over the limit of {limit} bytes", 413, "too_large")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, cfg: ServeConfig) -> bytes:
    """The body, read chunk by chunk and abandoned at the limit: a body over it (declared, or chunked and only
    found out while reading) is refused with 413 after at most the limit's worth of bytes is held."""
    limit = max_body_bytes(cfg)
    if content_length is not None:
        if not content_length.strip().isdigit():
            raise RequestError(None, f"malformed Content-Length header {content_length[:40]!r}", code="malformed_header")
        if int(content_length) > limit:
            raise _too_large(content_length.strip(), limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise _too_large(f"more than {limit}", limit)
    return bytes(body)


class BodySlots:
    """Admission for request bodies being received: at most `total` at once, `per_client` from one address; one
    over either is refused at once (503, 429) instead of waiting, so slow uploaders cannot take every slot of the
    ingress. Used from one event loop: no lock."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self.active: dict[str, int] = {}

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        if sum(self.active.values()) >= self.total:
            raise RequestError(None, f"{self.total} request bodies are being received already; retry shortly", 503,
                               "overloaded")
        if self.active.get(client, 0) >= self.per_client:
            raise RequestError(None, f"{self.per_client} request bodies from {client} are being received already; "
                               "wait for one to finish", 429, "too_many_requests")
        self.active[client] = self.active.get(client, 0) + 1
        try:
            yield
        finally:
            self.active[client] -= 1
            if not self.active[client]:
                del self.active[client]


async def read_body_in_time(chunks: AsyncIterator[bytes], content_length: str | None, cfg: ServeConfig) -> bytes:
    """read_body within serve.body_timeout_s, else 408."""
    try:
        return await asyncio.wait_for(read_body(chunks, content_length, cfg), cfg.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(None, f"the request body did not arrive whole within {cfg.body_timeout_s:g} s", 408,
                           "body_timeout") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_body(raw: bytes, cfg: ServeConfig) -> dict[str, Any]:
    """A JSON object within the limits: size, nesting depth, and text that is valid Unicode throughout."""
    if len(raw) > max_body_bytes(cfg):
        raise _too_large(str(len(raw)), max_body_bytes(cfg))
    if not raw.strip():
        raise RequestError(None, "empty request body; send a JSON object", code="malformed_json")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestError(None, f"JSON nested deeper than {cfg.max_json_depth} levels", code="too_deep") from None
    except ValueError as exc:  # JSONDecodeError, bytes that are not UTF-8, NaN, an integer of 4300+ digits
        raise RequestError(None, f"malformed JSON: {exc}", code="malformed_json") from None
    if not isinstance(body, dict):
        raise RequestError(None, f"the JSON body must be an object, got {type(body).__name__}", code="malformed_json")
    check_json(body, cfg.max_json_depth)
    return body


def check_json(body: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and strings that are not valid Unicode (a lone UTF-16 surrogate such
    as "\\ud800" parses, then fails in the tokenizer), naming the field. Iterative: no recursion limit to hit."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            top = re.split(r"[.\[]", path, maxsplit=1)[0]  # the request field it is under
            raise RequestError(top or None, f"JSON nested deeper than {max_depth} levels", code="too_deep")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path or "<body>")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        else:
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(path or None, f"not valid Unicode text (a lone surrogate at character {exc.start})",
                           code="invalid_text") from None


def _field_path(body: Any, loc: tuple, missing: bool = False) -> str:
    """A pydantic error location as the request's own field path (`messages[0].content[1].image_url.url`): the
    location is walked through the body, so the labels pydantic adds for union members drop out. With `missing`,
    the last element is a field the body lacks, named all the same."""
    parts, node = [], body
    for i, item in enumerate(loc):
        if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(node, dict) and isinstance(item, str) and (item in node or (missing and i == len(loc) - 1)):
            parts.append(f".{item}" if parts else item)
            node = node.get(item)
    return "".join(parts)


def validate(model: type[M], body: dict) -> M:
    """The body as `model`, or a RequestError naming the field at fault (the deepest one a union got to)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        err = max(errors, key=lambda e: len(e["loc"]))
        where = _field_path(body, err["loc"], missing=err["type"] == "missing")
        if err["type"] == "extra_forbidden":
            raise RequestError(where, "unknown field") from None
        raise RequestError(where or None, err["msg"]) from None


# -- images --------------------------------------------------------------------------------------------
def decode_image(value: str, param: str, cfg: ServeConfig, require_data_uri: bool = False) -> Image.Image:
    """A base64 string (or a data: URI) -> RGB image (r3v_ray/tasks/imaging.py: allowed formats only, reduced to the
    pixel budget while decoding), within the byte and pixel limits of the config."""
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
        return imaging.decode_image(data, partial(_check_size, cfg, param), cfg.image_pixel_budget)
    except imaging.ImageError as exc:
        if exc.kind == "format":
            raise RequestError(param, str(exc), code="unsupported_image_format") from None
        if exc.kind == "too_large":
            raise RequestError(param, f"image is {exc}", 413, "image_too_large") from None
        raise RequestError(param, f"the decoded bytes are not a readable image ({exc})", code="bad_image") from None


def _check_size(cfg: ServeConfig, param: str, width: int, height: int) -> None:
    """The size the image's header declares, refused before its pixels are decoded."""
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise RequestError(param, f"image of {width}x{height} pixels has an aspect ratio over {MAX_ASPECT_RATIO}")
    if width * height > cfg.max_image_pixels:
        raise RequestError(param, f"image of {width}x{height} pixels is over the limit of {cfg.max_image_pixels} "
                           "pixels", 413, "image_too_large")


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
    select_max_new_tokens: int | None = None,
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
        longest = max(range(len(choices)), key=lambda i: len(choices[i]))
        if len(choices[longest]) > cfg.max_choice_chars:
            raise RequestError(f"{names.get('choices', 'choices')}[{longest}]",
                               f"{len(choices[longest])} characters is over the limit of {cfg.max_choice_chars}")
    total = len(question) + sum(len(c) for c in choices or [])
    if total > cfg.max_prompt_chars:
        raise fail("choices" if choices else "question",
                   f"the question and its choices have {total} characters, over the limit of {cfg.max_prompt_chars}")
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
    return Query(question, image, choices, strategy, params, select_max_new_tokens)


# -- POST /v1/select -------------------------------------------------------------------------------------
def parse_select(body: dict[str, Any], cfg: ServeConfig, select_max_new_tokens: int | None = None) -> Query:
    req = validate(SelectRequest, body)
    kw = {**_sampling_kw(req.sampling), "select_max_new_tokens": select_max_new_tokens}
    # Check the cheap fields before decoding the image.
    build_query(cfg, req.question, None, req.choices, req.n, req.strategy, **kw)
    image = decode_image(req.image, "image", cfg) if req.image is not None else None
    return build_query(cfg, req.question, image, req.choices, req.n, req.strategy, **kw)


def _sampling_kw(sampling: SamplingOptions | None) -> dict[str, Any]:
    kw = sampling.model_dump() if sampling else {}
    kw["names"] = {k: f"sampling.{k}" for k in ("temperature", "top_p", "top_k", "max_new_tokens", "seed")}
    return kw


# -- POST /v1/chat/completions -----------------------------------------------------------------------------
CHAT_NAMES = {"max_new_tokens": "max_tokens", "choices": "answer_choices", "question": "messages"}


def chat_question(messages: list[ChatMessage] | None) -> tuple[str, str | None, str]:
    """(question text, image URL or None, field name of the image) from the LAST user message.

    Earlier turns and system messages are ignored: the served prompt format is the one the model was trained on.
    """
    if not messages:
        raise RequestError("messages", "missing or empty; send at least one user message")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise RequestError("messages", "no message with role 'user'; the question goes in the last user message")
    i = users[-1]
    content, where = messages[i].content, f"messages[{i}].content"
    if content is None or isinstance(content, str):
        return content or "", None, where
    texts, image, image_field = [], None, where
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        if image is not None:
            raise RequestError(f"{where}[{j}]", "more than one image; the model reads one image per question")
        url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
        image, image_field = url, f"{where}[{j}].image_url.url"
    return "\n".join(t for t in texts if t.strip()), image, image_field


_NO_TOOLS = "tools are not supported: the model answers in text only"
# OpenAI chat fields this server cannot honour: (why, the values that ask for nothing and are accepted as absent).
UNHONOURED: dict[str, tuple[str, list[Any]]] = {
    "stream": ("streaming is not supported: the answer is chosen after all candidates are drawn", [False]),
    "stream_options": ("streaming is not supported", []),
    "stop": ("stop sequences are not applied: each candidate is read to its final answer line", [[], ""]),
    "logprobs": ("log probabilities are not returned", [False]),
    "top_logprobs": ("log probabilities are not returned", [0]),
    "logit_bias": ("logit bias is not applied", [{}]),
    "presence_penalty": ("penalties are not applied", [0]),
    "frequency_penalty": ("penalties are not applied", [0]),
    "response_format": ("response formats are not enforced: the answer is the model's text",
                        [{"type": "text"}]),
    "tools": (_NO_TOOLS, [[]]),
    "tool_choice": (_NO_TOOLS, ["none"]),
    "parallel_tool_calls": (_NO_TOOLS, [True, False]),
    "functions": (_NO_TOOLS, [[]]),
    "function_call": (_NO_TOOLS, ["none"]),
    "modalities": ("only text output", [["text"]]),
    "audio": ("only text output", []),
    "prediction": ("predicted outputs are not used", []),
    "reasoning_effort": ("reasoning effort is not adjustable", []),
    "web_search_options": ("web search is not available", []),
    "store": ("completions are not stored", [False]),
    "metadata": ("completions are not stored", [{}]),
    "service_tier": ("service tiers are not offered", ["auto", "default"]),
}


def _refuse_unhonoured(body: dict[str, Any]) -> dict[str, Any]:
    """The body less the OpenAI fields that ask for nothing; one that asks for what we cannot do is refused."""
    kept = {}
    for name, value in body.items():
        if name in UNHONOURED:
            why, no_op = UNHONOURED[name]
            # a bool is no number here: `False == 0` would let `logprobs: 0` pass, `top_logprobs: false` too
            asks_nothing = any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in no_op)
            if value is not None and not asks_nothing:
                raise RequestError(name, f"not supported by this server ({why}); omit it or send null")
            continue
        kept[name] = value
    return kept


def parse_chat(body: dict[str, Any], cfg: ServeConfig, model_id: str, aliases: Sequence[str] = (),
               select_max_new_tokens: int | None = None) -> Query:
    """A chat request as a Query. Its `model` is the served id or one of its `aliases`; the reply names the id."""
    req = validate(ChatCompletionRequest, _refuse_unhonoured(body))
    served = f"this server serves {model_id!r}" + (f" (also answered as {', '.join(map(repr, aliases))})"
                                                    if aliases else "")
    if not req.model:
        raise RequestError("model", f"missing; {served}")
    if req.model != model_id and req.model not in aliases:
        raise RequestError("model", f"model {req.model!r} is not served here; {served}", 404, "model_not_found")
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise RequestError("max_tokens", "max_tokens and max_completion_tokens disagree; send one")
    question, image_url, image_field = chat_question(req.messages)
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    kw = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, max_new_tokens=max_new, seed=req.seed,
              names=CHAT_NAMES, select_max_new_tokens=select_max_new_tokens)
    build_query(cfg, question, None, req.answer_choices, req.n, req.strategy, **kw)  # cheap fields first
    image = decode_image(image_url, image_field, cfg, require_data_uri=True) if image_url is not None else None
    return build_query(cfg, question, image, req.answer_choices, req.n, req.strategy, **kw)
