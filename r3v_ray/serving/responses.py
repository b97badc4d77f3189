"""Response bodies, pure: a Selection -> the /v1/select body, or an OpenAI chat.completion with the selection
attached under the extension key `selection` (the openai client keeps unknown keys). The shapes are the models of
serving/schemas.py."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any

from r3v_ray.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ModelCard,
    ModelList,
    SelectionResponse,
)
from r3v_ray.serving.selector import Selection


def select_body(selection: Selection, model_id: str) -> SelectionResponse:
    return SelectionResponse(model=model_id, n=len(selection.candidates), **asdict(selection))


def chat_body(selection: Selection, model_id: str) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model_id,
        choices=[ChatChoice(index=0, message=AssistantMessage(content=selection.text),
                            finish_reason=selection.finish_reason)],
        selection=select_body(selection, model_id),
    )


def models_body(model: dict[str, Any]) -> ModelList:
    """OpenAI's model list, one entry, with where it came from: checkpoint, round, run, task."""
    fields = ("id", "aliases", "created", "checkpoint", "round", "run_dir", "task", "engine")
    return ModelList(data=[ModelCard(**{k: model.get(k) for k in fields})])
