"""The training-set file: example rows (see r3v_ray/reflect.py) in parquet, with a fixed schema and validation."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from r3v_ray import store
from r3v_ray.reflect import TASKS

# Integer id of each example kind, as the collator hands it to the loss.
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASKS)}
# Which loss term each kind trains: warm-up counts with SFT.
TERMS = ("sft", "refine", "select")
TERM_OF_TASK: dict[str, str] = {"warmup": "sft", "sft": "sft", "refine": "refine", "select": "select"}

EXAMPLE_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("question_id", pa.string()),
        ("prompt", pa.string()),
        ("target", pa.string()),
        ("image", pa.string()),
    ]
)


class ExampleError(ValueError):
    """A training example that cannot be used; the message names the row, its question id and the field."""


def validate_example(index: int, row: dict[str, Any]) -> dict[str, Any]:
    qid = row.get("question_id")
    where = f"training example {index} (question {qid!r})"
    if row.get("task") not in TASK_IDS:
        raise ExampleError(f"{where}: field 'task' is {row.get('task')!r}, expected one of {list(TASK_IDS)}")
    for name in ("question_id", "prompt", "target"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ExampleError(f"{where}: field {name!r} is missing or empty")
    if row.get("image") is not None and not isinstance(row["image"], str):
        raise ExampleError(f"{where}: field 'image' must be a path or null")
    return {k: row.get(k) for k in EXAMPLE_SCHEMA.names}


def examples_table(examples: list[dict[str, Any]]) -> pa.Table:
    rows = [validate_example(i, row) for i, row in enumerate(examples)]
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)


def write_examples(uri: str, examples: list[dict[str, Any]]) -> None:
    """Validate and write example rows atomically (local path or pyarrow filesystem URI)."""
    store.write_parquet(uri, examples_table(examples))


def read_examples(uri: str) -> list[dict[str, Any]]:
    table = store.read_parquet(uri)
    missing = set(EXAMPLE_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ExampleError(f"{uri}: missing column(s) {sorted(missing)}")
    return [validate_example(i, row) for i, row in enumerate(table.to_pylist())]
