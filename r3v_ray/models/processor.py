"""The processors of the model families (r3v_ray/models/families.py), without torchvision.

transformers' Qwen2VLProcessor, Qwen2_5_VLProcessor and Qwen3VLProcessor always ask for a video processor, and the
video processors import torchvision, which has no CPU build on our registry (docs/architecture.md, platform facts). AutoProcessor
then silently falls back to the bare tokenizer. The subclasses here carry only the PIL image processor and the
tokenizer; the image preprocessing is the family's own (its patch size and statistics come from the checkpoint's
preprocessor config).

vLLM, on the other hand, loads the family's full processor, which refuses a directory without a video processor
config ("Can't load video processor"). So every directory these processors are saved to gets one (as JSON: the
class itself needs torchvision), with the image processor's patching and pixel bounds, though nothing here uses
video. They are saved under the family's own processor class name, so the directory is an ordinary one of its
family (AutoProcessor with torchvision installed loads the full processor from it).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from r3v_ray.models.families import Family, ModelFamilyError, check_chat_template, check_tokenizer, family_of, get_family

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"  # transformers' VIDEO_PROCESSOR_NAME


def _token_and_id(tokenizer, attribute: str, default: str) -> tuple[str, int]:
    token = getattr(tokenizer, attribute, None) or default
    token_id = getattr(tokenizer, f"{attribute}_id", None) or tokenizer.convert_tokens_to_ids(token)
    return token, token_id


class _ImageOnly:
    """The family processor's __init__ without the video processor (images and text only)."""

    family_name = "qwen2_vl"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.image_token_id = _token_and_id(tokenizer, "image_token", IMAGE_TOKEN)
        self.video_token, self.video_token_id = _token_and_id(tokenizer, "video_token", VIDEO_TOKEN)
        # Qwen3VLProcessor's own attributes (the Qwen2 processors have none of these and ignore them)
        self.vision_start_token, self.vision_start_token_id = _token_and_id(tokenizer, "vision_start_token", VISION_START)
        self.vision_end_token, self.vision_end_token_id = _token_and_id(tokenizer, "vision_end_token", VISION_END)
        # Skip the family processor's __init__: it insists on a video processor.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @property
    def family(self) -> Family:
        return get_family(self.family_name)

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = super().save_pretrained(save_directory, *args, **kwargs)
        directory = Path(save_directory)
        # The family's class name, not ours: an ordinary directory of the family (the tokenizer remembers it for
        # its own later saves).
        self.tokenizer._set_processor_class(self.family.processor)
        for name in ("processor_config.json", "tokenizer_config.json"):
            path = directory / name
            if path.is_file():
                data = json.loads(path.read_text())
                if data.get("processor_class") == type(self).__name__:
                    data["processor_class"] = self.family.processor
                    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        video = directory / VIDEO_PROCESSOR_FILE
        if not video.exists():
            video.write_text(json.dumps(video_processor_config(self.image_processor, self.family), indent=2))
        return out


class ImageOnlyQwen2VLProcessor(_ImageOnly, Qwen2VLProcessor):
    family_name = "qwen2_vl"


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    family_name = "qwen2_5_vl"


class ImageOnlyQwen3VLProcessor(_ImageOnly, Qwen3VLProcessor):
    family_name = "qwen3_vl"


class ImageOnlyQwen3_5Processor(_ImageOnly, Qwen3VLProcessor):
    family_name = "qwen3_5"  # Qwen3.5 checkpoints use Qwen3VLProcessor


PROCESSORS = {cls.family_name: cls for cls in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor,
                                               ImageOnlyQwen3VLProcessor, ImageOnlyQwen3_5Processor)}


def video_processor_config(image_processor, family: Family) -> dict:
    """The family's video processor settings that match an image processor (mean and std are written too: the
    classes' defaults match the image processors' only by chance)."""
    ip = image_processor
    return {
        "video_processor_type": family.video_processor,
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


def _base_of_adapter(path: str | Path) -> str | Path:
    """An exported LoRA adapter directory has no processor files of its own: they are its base model's."""
    adapter = Path(str(path)) / "adapter_config.json"
    if adapter.is_file() and not (Path(str(path)) / "tokenizer_config.json").is_file():
        return json.loads(adapter.read_text()).get("base_model_name_or_path") or path
    return path


def image_pixel_budget(path: str | Path) -> int:
    """The most pixels the checkpoint's image processor keeps of an image (its max_pixels; serving reduces a larger
    image to about this while decoding it)."""
    return int(Qwen2VLImageProcessorPil.from_pretrained(str(_base_of_adapter(path))).size["longest_edge"])


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """The processor of a local checkpoint directory or hub name (hub only when online) of a supported family.

    The family comes from the checkpoint's config.json; a tokenizer that lacks the family's special tokens, or a
    chat template that does not render the prompts r3v builds, is refused with the missing piece named."""
    family = family_of(path)
    path = _base_of_adapter(path)
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
        raise ModelFamilyError(f"{path}: no chat template found (chat_template.jinja/.json or in the tokenizer), "
                               f"and {family.title} prompts are built with the family's template")
    check_tokenizer(family, tokenizer, str(path))
    tokenizer.padding_side = "left"  # generation pads on the left; the collator sets its own side
    processor = PROCESSORS[family.name](image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    from r3v_ray.models.chat import render_messages  # the renderer every prompt goes through

    check_chat_template(family, lambda messages, gen: render_messages(processor, messages, gen), str(path))
    return processor


__all__ = ["ImageOnlyQwen2VLProcessor", "ModelFamilyError", "PROCESSORS", "image_pixel_budget", "load_processor",
           "video_processor_config"]
