"""A round's manifest.json: which stages finished, with what config, when, and what they reported.

A stage is done only once its outputs are written (atomically) and then recorded here, with the size and checksum
of each (its "outputs", r3v_ray/run/layout.py), so a crash between the two just redoes the stage. A manifest written
under a different config is refused unless forced; one that cannot be read is named (ManifestError) and, when
forced, replaced by a fresh one. Only this module reads or writes manifest files (r3v_ray/run/layout.py asks it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from r3v_ray.run import store

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A run directory r3v cannot trust as it is: the message names the file and what to do."""


class ConfigChangedError(RunDirError):
    """A round's manifest written under another config (the command line shows it as one line)."""


class ManifestError(RunDirError):
    """A manifest.json that cannot be read."""


def redo_hint(round_index: int) -> str:
    """How to redo round `round_index` from its first damaged stage on (r3v_ray/pipeline/round.py redoes what was made from it)."""
    return (f"re-run with --from-round {round_index} --force (r3v run, jobs/selftrain.py) or --round {round_index} "
            "--force (r3v round, jobs/round.py)")


@dataclass
class Manifest:
    uri: str
    config_digest: str | None
    round: int
    stages: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, uri: str, round_index: int) -> "Manifest | None":
        """The manifest as stored (under whatever config), or None when there is none; a ManifestError names one
        that cannot be read."""
        if not store.exists(uri):
            return None
        try:
            data = store.read_json(uri)
            if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict) or not all(
                    isinstance(rec, dict) for rec in data.get("stages", {}).values()):
                raise ValueError("not a JSON object with a 'stages' object of stage records")
        except ValueError as exc:  # bad JSON, bad UTF-8, or the wrong shape
            raise ManifestError(
                f"{uri} cannot be read as round {round_index}'s manifest ({type(exc).__name__}: {exc}); without it "
                f"no stage of the round can be trusted. Restore the file, or redo the round: {redo_hint(round_index)}"
            ) from None
        return cls(uri, data.get("config_digest"), data.get("round", round_index), data.get("stages", {}))

    @classmethod
    def open(cls, uri: str, config_digest: str, round_index: int, force: bool = False) -> "Manifest":
        """The manifest to record this run's stages in: the stored one when written under this config, a fresh
        one when there is none (or when `force` redoes everything under a new config, or in place of a manifest that
        cannot be read)."""
        try:
            stored = cls.load(uri, round_index)
        except ManifestError as exc:
            if not force:
                raise
            log.warning("--force: %s: the round's stages are redone", str(exc).partition(";")[0])
            return cls(uri, config_digest, round_index)
        if stored is None:
            return cls(uri, config_digest, round_index)
        if stored.config_digest != config_digest:
            if not force:
                raise ConfigChangedError(
                    f"{uri} was written under config {stored.config_digest}, but this config is {config_digest}. "
                    "Finished stages would not match the new settings: re-run with --force to redo them under the "
                    "new config, or give the run a new `name`."
                )
            return cls(uri, config_digest, round_index)  # forced: every stage is redone
        return stored

    def done(self, stage: str, config_digest: str | None = None) -> bool:
        """The stage finished (under `config_digest`, when given)."""
        if config_digest is not None and self.config_digest != config_digest:
            return False
        return self.stages.get(stage, {}).get("status") == "done"

    def any_done(self) -> bool:
        return any(s.get("status") == "done" for s in self.stages.values())

    def outputs(self, stage: str) -> dict | None:
        """What a done stage recorded writing ({path relative to the round: record}), None for a stage recorded
        before r3v kept outputs."""
        return self.stages.get(stage, {}).get("outputs") if self.done(stage) else None

    def invalidate(self, stages: list[str], reason: str) -> None:
        """Mark done stages stale (they are redone): what they were made from has been redone differently."""
        for stage in stages:
            if self.done(stage):
                self.stages[stage] = {**self.stages[stage], "status": "stale", "stale_because": reason}
        self.save()

    def record(self, stage: str, seconds: float, **info) -> None:
        self.stages[stage] = {"status": "done", "seconds": round(seconds, 3), "finished_at": time.time(), **info}
        self.save()

    def start(self, stage: str, **info) -> None:
        """Record `stage` as running (`info`: who runs it; r3v_ray/observe/status.py reads it). Not done: a crash leaves
        it running, and the next run redoes it."""
        self.stages[stage] = {"status": "running", "started_at": time.time(), **info}
        self.save()

    def fail(self, stage: str, error: str) -> None:
        """Record that `stage` raised `error` (what `r3v status` shows); the next run redoes it."""
        self.stages[stage] = {**self.stages.get(stage, {}), "status": "failed", "failed_at": time.time(),
                              "error": error}
        self.save()

    def save(self) -> None:
        store.write_json(
            self.uri, {"config_digest": self.config_digest, "round": self.round, "stages": self.stages}
        )
