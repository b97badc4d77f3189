"""The model as training sees it: full or LoRA fine-tuning, a frozen vision tower, and the Hugging Face export."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from r3v_ray.config import TrainingConfig
from r3v_ray.models import load_model
from r3v_ray.models.families import Family, family_of


def lora_targets(model: torch.nn.Module, cfg: TrainingConfig, family: Family) -> list[str]:
    """Full names of the Linear layers LoRA adapts: the configured projection names (the family's own by default),
    outside the vision tower when it is frozen."""
    wanted = set(cfg.lora.target_modules or family.lora_targets)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in wanted
        and not (cfg.freeze_vision and family.is_vision(name))
    ]
    if not names:
        where = "training.lora.target_modules" if cfg.lora.target_modules else f"{family.title}'s LoRA targets"
        raise ValueError(f"{where} {sorted(wanted)} match no Linear layer of the model")
    return names


def build_trainable_model(base_model_path: str, cfg: TrainingConfig) -> torch.nn.Module:
    """Load the base model in float32 (DeepSpeed casts for bf16) and set what trains."""
    torch.manual_seed(cfg.seed)  # LoRA's initial adapter weights
    family = family_of(base_model_path)  # from its config.json: which modules are the vision tower, which LoRA's
    model = load_model(base_model_path, "float32")
    model.train()
    model.config.use_cache = False
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=lora_targets(model, cfg, family),
            bias="none",
        )
        return get_peft_model(model, lora)  # everything but the adapters is frozen
    if cfg.freeze_vision:
        for name, param in model.named_parameters():
            if family.is_vision(name):
                param.requires_grad_(False)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable_vision_parameters(model: torch.nn.Module, base_model_path: str) -> list[torch.nn.Parameter]:
    """The vision tower's parameters that train (none while it is frozen)."""
    family = family_of(base_model_path)
    return [p for n, p in model.named_parameters() if p.requires_grad and family.is_vision(n)]


def export_hf(model: torch.nn.Module, processor, out_dir: str | Path, base_model_path: str) -> Path:
    """Write a Hugging Face directory that `load_model_and_processor` and the engines load: merged weights
    (LoRA adapters folded in), config, generation config and every processor file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    if processor.chat_template:
        (out / "chat_template.jinja").write_text(processor.chat_template)
    spec = Path(base_model_path) / "r3v_tiny_spec.json"  # keeps a tiny model's sizes with its descendants
    if spec.is_file():
        shutil.copy(spec, out / spec.name)
    return out
