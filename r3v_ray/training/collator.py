"""Examples -> model batches: chat template, image tokens from the processor, labels on assistant tokens only.

Prompt and completion are tokenized separately and concatenated, so the prompt's tokens are exactly those the
engines feed at inference time, and the label mask is exact (no search for a boundary in merged text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from r3v_ray.models import chat_example
from r3v_ray.tasks.base import RecordError, load_image
from r3v_ray.training.examples import TASK_IDS

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt (image tokens included), token ids on target + end of turn
    task_id: int
    mm_token_type_ids: list[int]  # 1 on image tokens: the model derives M-RoPE positions from it
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


class ReflectionCollator:
    """Callable on a list of example dicts; pads on the right (training)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        image_processor = processor.image_processor
        self._merge = image_processor.merge_size**2

    def _image(self, example: dict) -> Image.Image | None:
        return load_image(example["image"], example["question_id"]) if example.get("image") else None

    def encode(self, example: dict) -> EncodedExample:
        image = self._image(example)
        prompt, completion = chat_example(self.processor, example["prompt"], example["target"], image is not None)
        enc = self.processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
        prompt_ids = enc["input_ids"][0].tolist()
        target_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        return EncodedExample(
            input_ids=prompt_ids + target_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
            task_id=TASK_IDS[example["task"]],
            mm_token_type_ids=_token_types(enc, len(prompt_ids)) + [0] * len(target_ids),
            pixel_values=enc.get("pixel_values"),
            image_grid_thw=enc.get("image_grid_thw"),
        )

    def length(self, example: dict) -> int:
        """Token count of the encoded example without decoding the image (its header gives the size)."""
        prompt, completion = chat_example(self.processor, example["prompt"], example["target"], bool(example.get("image")))
        n = len(self.tokenizer(prompt + completion, add_special_tokens=False)["input_ids"])
        if example.get("image"):
            try:
                with Image.open(example["image"]) as img:
                    width, height = img.size
            except Exception as exc:  # PIL raises several unrelated types
                raise RecordError(example["question_id"], "image", f"unreadable image ({type(exc).__name__}: {exc})") from exc
            patches = self.processor.image_processor.get_number_of_image_patches(height, width)
            n += patches // self._merge - 1  # the placeholder token expands to this many
        return n

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        return self.pad([self.encode(e) for e in examples])

    def pad(self, encoded: list[EncodedExample]) -> dict[str, Any]:
        width = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        token_types = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            attention[row, :n] = 1
            token_types[row, :n] = torch.tensor(e.mm_token_type_ids)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "mm_token_type_ids": token_types,
            "labels": labels,
            "task_ids": torch.tensor([e.task_id for e in encoded], dtype=torch.long),
        }
        with_image = [e for e in encoded if e.pixel_values is not None]
        if with_image:
            batch["pixel_values"] = torch.cat([e.pixel_values for e in with_image])
            batch["image_grid_thw"] = torch.cat([e.image_grid_thw for e in with_image])
        return batch


def _token_types(enc, n: int) -> list[int]:
    types = enc.get("mm_token_type_ids")
    return types[0].tolist() if types is not None else [0] * n


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys the model's forward takes (labels and task ids stay with the loss)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "task_ids")}
