"""A tiny, randomly initialised Qwen2-VL-architecture model with a locally trained tokenizer (no hub access).

The result is an ordinary Hugging Face directory (config, weights, tokenizer, image processor (and the video
processor config vLLM asks for, r3v_ray/models/processor.py), chat template) that
`r3v_ray.models.load_model_and_processor` and vLLM both load like a real Qwen2-VL checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from r3v_ray.models.processor import ImageOnlyQwen2VLProcessor

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

# Same behaviour as Qwen2-VL's template for what we use: default system turn, image placeholders, text parts.
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


@dataclass
class TinySpec:
    """Sizes of the tiny model. head_dim = hidden_size / num_heads; mrope_section must sum to head_dim / 2.

    The default head size is 32 (2 heads over width 64, as many key/value heads) because vLLM's CPU attention
    supports head sizes 32, 64, 80 and up only; at head size 16 a vLLM engine fails at its first generate.
    """

    vocab_size: int = 768
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    vision_depth: int = 1
    vision_embed_dim: int = 32
    vision_heads: int = 2
    patch_size: int = 14
    merge_size: int = 2
    max_position_embeddings: int = 2048
    # Weight init std. Hugging Face's 0.02 suits wide models; at width 64 it starts every attention logit near
    # zero and the text-to-image attention sits on a long plateau (the model did not learn to count in 1,000 steps).
    # 0.1 was enough at 4 heads of 16; at 2 heads of 32 a fresh model stayed on that plateau for 100 steps of the
    # red-object probe (tests/test_models.py) at 0.1 and left it within 20-80 steps at 0.2 for seeds 0-3.
    initializer_range: float = 0.2
    seed: int = 0
    mrope_section: list[int] = field(default_factory=list)

    def resolved_mrope(self) -> list[int]:
        if self.mrope_section:
            return list(self.mrope_section)
        half = (self.hidden_size // self.num_heads) // 2
        t = half - 2 * (half // 3)  # temporal gets the remainder, height and width equal shares
        return [t, half // 3, half // 3]


def default_corpus() -> list[str]:
    """Text the tokenizer learns merges from: the built-in task's questions and rationales plus prompt words."""
    from r3v_ray.prompts import PROMPT_WORDS
    from r3v_ray.tasks.synthetic import SyntheticTask

    task = SyntheticTask()
    lines = list(PROMPT_WORDS)
    for record in task.generate_records("train", 400, seed=12345):
        lines += [task.cot_prompt(record), record.rationale or "", task.format_answer(record.answer)]
    return lines


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(spec: TinySpec, tokenizer) -> Qwen2VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": spec.resolved_mrope()},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        initializer_range=spec.initializer_range,
    )
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_embed_dim,
        hidden_size=spec.hidden_size,  # the merger projects straight into the text model's width
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.merge_size,
        initializer_range=spec.initializer_range,
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
    )


def build_tiny_model(out_dir: str | Path, spec: TinySpec | None = None, corpus: Iterable[str] | None = None) -> Path:
    """Write a tiny Qwen2-VL model directory; returns its path. Deterministic for a given spec and corpus."""
    spec = spec or TinySpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus if corpus is not None else default_corpus(), spec.vocab_size)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        merge_size=spec.merge_size,
        temporal_patch_size=2,
        min_pixels=(spec.patch_size * spec.merge_size) ** 2,
        max_pixels=(spec.patch_size * spec.merge_size) ** 2 * 64,  # at most 64 visual tokens per image
    )
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    torch.manual_seed(spec.seed)
    config = tiny_config(spec, tokenizer)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "r3v_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True))
    return out
