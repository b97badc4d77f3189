"""Response bodies, pure: a Selection -> the /v1/select JSON, or an OpenAI chat.completion with the
selection attached under the extension key `selection` (the openai client keeps unknown keys)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from r3v_ray.serving.selector import Selection


def select_body(selection: Selection, model_id: str) -> dict[str, Any]:
    body = selection.to_dict()
    body.update(object="r3v.selection", model=model_id, n=len(selection.candidates))
    return body


def chat_body(selection: Selection, model_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": selection.text},
                "finish_reason": selection.finish_reason,
                "logprobs": None,
            }
        ],
        "selection": select_body(selection, model_id),
    }


def models_body(model: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's model list, one entry, with where it came from: checkpoint, round, run, task."""
    entry = {"id": model["id"], "object": "model", "created": model["created"], "owned_by": "r3v-ray"}
    entry.update({k: model.get(k) for k in ("checkpoint", "round", "run_dir", "task", "engine")})
    return {"object": "list", "data": [entry]}
