"""Chat formatting shared by sampling, training and serving: one place decides how a prompt becomes text."""

from __future__ import annotations


def _messages(user_text: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": user_text}]
    return [{"role": "user", "content": content}]


def chat_prompt(processor, user_text: str, with_image: bool = True) -> str:
    """The prompt text up to and including the assistant header (what generation continues from)."""
    return processor.apply_chat_template(
        _messages(user_text, with_image), tokenize=False, add_generation_prompt=True
    )


def chat_example(processor, user_text: str, target: str, with_image: bool = True) -> tuple[str, str]:
    """(prompt, completion) for training: the completion is the assistant text plus the end-of-turn token."""
    prompt = chat_prompt(processor, user_text, with_image)
    end = processor.tokenizer.eos_token or "<|im_end|>"
    return prompt, target + end
