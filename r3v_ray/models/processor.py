"""A Qwen2-VL processor that needs no torchvision.

transformers' Qwen2VLProcessor always asks for a video processor, and the video processor imports torchvision,
which has no CPU build on our registry (docs/design.md section 9). AutoProcessor silently falls back to the bare
tokenizer. This subclass carries only the PIL image processor and the tokenizer, and works for Qwen2-VL and
Qwen2.5-VL checkpoints alike (they share the image preprocessing).

vLLM, on the other hand, loads the full Qwen2VLProcessor, which refuses a directory without a video processor
config ("Can't load video processor"). So every directory this processor is saved to gets one (as JSON: the class
itself needs torchvision), with the image processor's patching and pixel bounds, though nothing here uses video.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, ProcessorMixin
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without the video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        # Skip Qwen2VLProcessor.__init__: it insists on a video processor.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / VIDEO_PROCESSOR_FILE
        if not path.exists():
            path.write_text(json.dumps(video_processor_config(self.image_processor), indent=2))
        return out


VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"  # transformers' VIDEO_PROCESSOR_NAME


def video_processor_config(image_processor) -> dict:
    """transformers' Qwen2VLVideoProcessor settings that match an image processor (mean and std are both
    classes' defaults only by chance, so they are written too)."""
    ip = image_processor
    return {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "patch_size": ip.patch_size,
        "merge_size": ip.merge_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "size": {"shortest_edge": ip.size["shortest_edge"], "longest_edge": ip.size["longest_edge"]},
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
    }


def _read_chat_template(directory: Path, tokenizer) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = directory / "chat_template.json"
    if as_json.is_file():
        return json.loads(as_json.read_text())["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load the processor of a local Qwen2-VL / Qwen2.5-VL directory or hub name (hub only when online)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs = {}
    if min_pixels is not None:
        kwargs["min_pixels"] = min_pixels
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), **kwargs)
    local = Path(str(path))
    template = _read_chat_template(local, tokenizer) if local.is_dir() else getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ValueError(f"{path}: no chat template found (chat_template.jinja/.json or in the tokenizer)")
    tokenizer.padding_side = "left"  # generation pads on the left; the collator sets its own side
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
