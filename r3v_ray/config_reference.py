"""docs/configuration.md, generated from the config's pydantic fields (`r3v config --reference`), so the page
cannot drift from the code: tests/test_config.py compares the committed page with this output."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from r3v_ray.config import RunConfig

HEADER = """# Configuration

Every key of a run config, its type, default and meaning, generated from `r3v_ray/config.py` (the one place for
defaults) by `r3v config --reference > docs/configuration.md`; do not edit by hand. A config is YAML; unknown keys
are refused, and an error names the field (`training.lr: Input should be a valid number`). `r3v config FILE
[--set key=value ...]` validates a config and prints it with every default filled in. Sections marked "not hashed"
change no round's outputs, so changing them never counts as a config change for a run (docs/run-directory.md).
"""


def _type_name(annotation) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    return text.replace("typing.", "").replace("NoneType", "None").replace("r3v_ray.config.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else json.dumps(value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default)


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{_type_name(field.annotation)}` | `{_default(field)}` | {description} |")
    return rows


def reference_markdown() -> str:
    """The whole reference page: the top-level keys, then one table per section."""
    sections, top = [], []
    for name, field in RunConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation))
        else:
            top.append(name)
    lines = [HEADER, "## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [row for row in _rows(RunConfig, "") if row.split("`")[1] in top]
    hashed_out = set(RunConfig.NOT_HASHED)
    for name, model in sections:
        doc = " ".join((model.__doc__ or "").split())
        lines += ["", f"## `{name}`" + (" (not hashed)" if name in hashed_out else ""), ""]
        if doc and not doc.startswith(model.__name__ + "("):
            lines += [doc, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"] + _rows(model, f"{name}.")
        lines += _subsections(model, name)
    return "\n".join(lines) + "\n"


def _subsections(model: type[BaseModel], prefix: str) -> list[str]:
    """One table per nested section (e.g. model.tiny, then model.tiny.pretrain), depth first."""
    lines = []
    for sub_name, sub in model.model_fields.items():
        for candidate in typing.get_args(sub.annotation) or (sub.annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                path = f"{prefix}.{sub_name}"
                lines += ["", f"### `{path}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
                lines += _rows(candidate, f"{path}.") + _subsections(candidate, path)
    return lines
