"""The training-set file: example rows (see r3v_ray/method/reflect.py) in parquet, with a fixed schema and validation."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from r3v_ray.run import store
from r3v_ray.method.reflect import TASKS
from r3v_ray.tasks.base import RecordError, load_image

# Integer id of each example kind, as the collator hands it to the loss.
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASKS)}

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


def drop_unreadable_images(examples: list[dict[str, Any]], local_images=None
                           ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(kept, skipped): the examples whose image decodes as training decodes it (tasks.load_image), and one
    {question_id, field, reason} per question whose image does not. Each image is decoded once; `local_images`
    (r3v_ray/run/cache.py LocalImages) reads images under a remote task.data_dir from this node's copy.

    A garbage image file in the training data is thus skipped and counted where the training set is built,
    instead of failing training workers (which then retry, and fail again) after sampling already skipped it.
    """
    readable: dict[str, str | None] = {}  # image -> None, or why it cannot be read
    kept, skipped, named = [], [], set()
    for e in examples:
        image = e.get("image")
        if image and image not in readable:
            readable[image] = _unreadable(local_images(image) if local_images else image, str(e.get("question_id")))
        if image and readable[image] is not None:
            if e.get("question_id") not in named:
                named.add(e.get("question_id"))
                skipped.append({"question_id": str(e.get("question_id")), "field": "image", "reason": readable[image]})
            continue
        kept.append(e)
    return kept, skipped


def _unreadable(image: str, question_id: str) -> str | None:
    try:
        load_image(store.read_bytes(image) if "://" in image else image, question_id)
    except RecordError as exc:
        return exc.problem
    except OSError as exc:  # an object-store read that failed
        return f"cannot read {image} ({type(exc).__name__}: {exc})"
    return None


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
