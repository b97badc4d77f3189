"""The HTTP API's request and response bodies as pydantic models, in the OpenAI API's shape.

`POST /v1/chat/completions` takes OpenAI's chat request (the fields honoured here, plus the extensions
`strategy`, `top_k` and `answer_choices`) and answers a `chat.completion` with the selection attached under the
extension key `selection`, which the openai client keeps. `POST /v1/select` is our own shape. Errors are OpenAI's
`{"error": {message, type, param, code}}`. The models give the app's OpenAPI schema too (serving/routes.py).

Limits that the config sets (lengths of the question and choices, N, tokens) are checked in serving/parsing.py;
the fixed bounds here (list lengths, short strings) keep a request's size known before anything else reads it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

STRATEGIES = ("self_select", "majority", "first")
MAX_MESSAGES = 256  # chat turns in one request (only the last user message is read)
MAX_CONTENT_PARTS = 64  # parts of one message
MAX_NAME_CHARS = 256  # model ids, strategy names, roles' free text fields

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Lenient(BaseModel):
    """OpenAI bodies: fields we do not use are ignored (clients send many), the ones we read are typed."""

    model_config = ConfigDict(extra="ignore", strict=True)


# -- POST /v1/select ------------------------------------------------------------------------------------------
class SamplingOptions(_Strict):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


class SelectRequest(_Strict):
    """The /v1/select body. `image` is base64 (a data: URI is accepted too)."""

    question: str | None = None
    image: str | None = None
    choices: list[str] | None = None
    n: int | None = None
    strategy: Name | None = None
    sampling: SamplingOptions | None = None


# -- POST /v1/chat/completions --------------------------------------------------------------------------------
class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL | str  # OpenAI's object; a bare URL string is accepted too


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None


class ChatCompletionRequest(_Strict):
    """The OpenAI fields we honour, plus extensions: `strategy`, `top_k`, `answer_choices`.

    An OpenAI field we cannot honour is refused naming it (serving/parsing.py UNHONOURED), unless its value asks
    for nothing (null, `stream: false`, `stop: []`, ...); a field that is not OpenAI's nor ours is refused too.
    """

    model: Name | None = None
    messages: Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)] | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    user: Name | None = None  # the caller's own end-user id; changes no answer
    # extensions (the openai client sends them with extra_body={...})
    strategy: Name | None = None
    top_k: int | None = None
    answer_choices: list[str] | None = None


# -- responses ------------------------------------------------------------------------------------------------
class Candidate(BaseModel):
    index: int
    text: str
    answer: str | None
    n_tokens: int


class SelectionResponse(BaseModel):
    """One best-of-N selection: the final answer, the candidate returned, every candidate and the votes."""

    object: Literal["r3v.selection"] = "r3v.selection"
    model: str
    n: int
    strategy: str
    answer: str | None  # the final answer
    chosen_index: int | None  # the candidate returned, None when no candidate holds the final answer
    text: str  # the chosen candidate's rationale, or the selector's output when no candidate was chosen
    finish_reason: Literal["stop", "length"]
    candidates: list[Candidate]
    votes: dict[str, int]
    selector_text: str | None = None
    selector_answer: str | None = None
    seed: int
    timings_ms: dict[str, float]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    selection: SelectionResponse  # extension: how the answer was chosen


class ModelCard(BaseModel):
    """OpenAI's model object, with where it came from: checkpoint, round, run, task and engine."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r3v-ray"
    aliases: list[str] = Field(default_factory=list, description="other names a chat request's `model` may give")
    checkpoint: str | None = None
    round: int | None = None
    run_dir: str | None = None
    task: str | None = None
    engine: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


class ErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


REQUEST_MODELS = (SelectRequest, ChatCompletionRequest)
