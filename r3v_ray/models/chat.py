"""Chat formatting shared by sampling, training and serving: one place decides how a prompt becomes text.

Every prompt is rendered with the checkpoint's own chat template and `enable_thinking=False`: a Qwen3.5 prompt then
ends with the template's closed, empty thinking block, and the rationale is the visible reply (the reasons are in
r3v_ray/models/families.py); templates without thinking markers ignore the flag.
"""

from __future__ import annotations

from r3v_ray.models.families import END_OF_TURN


def _messages(user_text: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": user_text}]
    return [{"role": "user", "content": content}]


def render_messages(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    # Passed only to templates that read it: transformers hands a variable the template lacks to the processor.
    template = processor.chat_template
    flags = {"enable_thinking": False} if isinstance(template, str) and "enable_thinking" in template else {}
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **flags
    )


def chat_prompt(processor, user_text: str, with_image: bool = True) -> str:
    """The prompt text up to and including the assistant header (what generation continues from)."""
    return render_messages(processor, _messages(user_text, with_image), add_generation_prompt=True)


def chat_example(processor, user_text: str, target: str, with_image: bool = True) -> tuple[str, str]:
    """(prompt, completion) for training: the completion is the assistant text plus the end-of-turn token, which
    the engines stop at (every family ends a turn with <|im_end|>, whatever its tokenizer's eos_token is)."""
    return chat_prompt(processor, user_text, with_image), target + END_OF_TURN
