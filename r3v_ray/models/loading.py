"""One loading path for tiny and real Qwen2-VL / Qwen2.5-VL checkpoints (local directory or hub name)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from r3v_ray.models.processor import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str | Path, dtype: str = "float32", device: str | None = None):
    """Load a Qwen2-VL-family model; an exported LoRA directory (adapter_config.json) is merged onto its base."""
    path = str(path)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
        base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=DTYPES[dtype])
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
    model.eval()
    if device:
        model.to(device)
    return model


def load_model_and_processor(path: str | Path, dtype: str = "float32", device: str | None = None, **processor_kw):
    """(model, processor) from one directory; the processor comes from the adapter's base when needed."""
    return load_model(path, dtype, device), load_processor(path, **processor_kw)
