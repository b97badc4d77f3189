"""One loading path for tiny and real checkpoints of every supported family (local directory or hub name)."""

from __future__ import annotations

from pathlib import Path

import torch

from r3v_ray.models.families import Family, ModelFamilyError, family_of
from r3v_ray.models.processor import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_class(family: Family, source: str):
    """The family's transformers class; a transformers without it is refused by name and version."""
    cls = family.transformers_class()
    if cls is None:
        import transformers

        raise ModelFamilyError(f"{source}: {family.title} needs transformers' {family.architecture}, which "
                               f"transformers {transformers.__version__} does not have")
    return cls


def load_model(path: str | Path, dtype: str = "float32", device: str | None = None):
    """Load a model of a supported family (config.json's model_type decides which, never the path); an exported
    LoRA directory (adapter_config.json) is merged onto its base."""
    path = str(path)
    family = family_of(path)  # refuses an unsupported architecture before any weights load
    cls = model_class(family, path)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
        base = cls.from_pretrained(base_path, dtype=DTYPES[dtype])
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = cls.from_pretrained(path, dtype=DTYPES[dtype])
    model.eval()
    if device:
        model.to(device)
    return model


def load_model_and_processor(path: str | Path, dtype: str = "float32", device: str | None = None, **processor_kw):
    """(model, processor) from one directory; the processor comes from the adapter's base when needed. The
    processor (which checks the tokenizer and chat template) loads first, so a bad checkpoint fails before its
    weights are read."""
    processor = load_processor(path, **processor_kw)
    return load_model(path, dtype, device), processor
