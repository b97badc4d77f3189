"""TensorBoard event files of a run, so that `tensorboard --logdir <storage.root>/<name>` shows it
(docs/observability.md; r3v_ray/run/layout.py names the directories):

    tensorboard/train-round-<kkk>/   rank 0's training, step = optimizer step: train/loss, train/loss_sft,
                                     train/loss_refine, train/loss_select, train/lr, train/step_seconds
    tensorboard/rounds/              step = round: eval/<metric>, sample/*, data/<task>, loss/final_*, time/<stage>

Written by torch.utils.tensorboard's SummaryWriter, which queues each event for a background thread to write:
a step costs a few tens of microseconds per scalar and never waits on the disk. On a local root the writer writes
into the run directory (TensorBoard shows a training while it runs); under a URI it writes into a local directory
and `sync` uploads its files (at each checkpoint report and at the end; an event file only ever grows, so the
upload replaces it whole).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from r3v_ray.run import store

log = logging.getLogger(__name__)

EVENT_PREFIX = "events.out.tfevents."


class EventLog:
    """Scalars into the event files of one TensorBoard run directory `uri` (local path or URI).

    `replace`: remove the event files already there first (a training that starts again from step 0, a summary
    rebuilt from scratch). `purge_step`: a training resumed from that step; TensorBoard then drops what an earlier
    attempt wrote from that step on, so a restarted worker group leaves one curve."""

    def __init__(self, uri: str, replace: bool = False, purge_step: int | None = None, flush_secs: int = 10):
        from torch.utils.tensorboard import SummaryWriter

        self.uri = uri
        self.remote = not store.is_local(uri)
        if replace:
            remove_event_files(uri)
        if self.remote:
            self.local = tempfile.mkdtemp(prefix="r3v-tensorboard-")
        else:
            _, self.local = store.resolve(uri)
            Path(self.local).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(self.local, purge_step=purge_step, flush_secs=flush_secs)

    def add(self, step: int, scalars: dict[str, float | int | None]) -> None:
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    def sync(self) -> None:
        """Everything added so far on disk, and under a URI uploaded."""
        self.writer.flush()
        if self.remote:
            for path in Path(self.local).iterdir():
                if path.is_file():
                    store.write_bytes(store.join(self.uri, path.name), path.read_bytes())

    def close(self) -> None:
        self.writer.close()
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def remove_event_files(uri: str) -> None:
    fs, path = store.resolve(uri)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.startswith(EVENT_PREFIX):
            fs.delete_file(info.path)


def rounds_scalars(rounds: list[dict]) -> dict[int, dict[str, float]]:
    """{round: {tag: value}} of the per-round summary, from r3v_ray/observe/report.py's round summaries."""
    out = {}
    for r in rounds:
        scalars: dict[str, float] = {}
        for name, value in (r.get("eval") or {}).items():
            if "@" in name or name == "zero-shot":
                if isinstance(value, (int, float)):
                    scalars[f"eval/{name}"] = value
        pool = r.get("pool") or {}
        for key in ("share_correct", "questions_none_correct", "questions_some_correct", "questions_all_correct",
                    "samples", "skipped"):
            if pool.get(key) is not None:
                scalars[f"sample/{key}"] = pool[key]
        for task, n in (r.get("examples") or {}).items():
            scalars[f"data/{task}"] = n
        for key, value in (r.get("losses") or {}).items():
            scalars[f"loss/{key}"] = value
        for stage, seconds in (r.get("seconds") or {}).items():
            scalars[f"time/{stage}_seconds"] = seconds
        out[r["round"]] = scalars
    return out


def write_rounds_log(uri: str, rounds: list[dict]) -> None:
    """The per-round event file rebuilt from the round summaries (called after every round, like report.md)."""
    events = EventLog(uri, replace=True)
    try:
        for k, scalars in sorted(rounds_scalars(rounds).items()):
            events.add(k, scalars)
    finally:
        events.close()
