"""A round's manifest.json: which stages finished, with what config, when, and what they reported.

A stage is done only once its outputs are written (atomically) and then recorded here, so a crash between the
two just redoes the stage. A manifest written under a different config is refused unless forced. Only this module
reads or writes manifest files (r3v_ray/rundir.py asks it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from r3v_ray import store


class ConfigChangedError(RuntimeError):
    pass


@dataclass
class Manifest:
    uri: str
    config_digest: str | None
    round: int
    stages: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, uri: str, round_index: int) -> "Manifest | None":
        """The manifest as stored (under whatever config), or None when there is none."""
        if not store.exists(uri):
            return None
        data = store.read_json(uri)
        return cls(uri, data.get("config_digest"), data.get("round", round_index), data.get("stages", {}))

    @classmethod
    def open(cls, uri: str, config_digest: str, round_index: int, force: bool = False) -> "Manifest":
        """The manifest to record this run's stages in: the stored one when written under this config, a fresh
        one when there is none (or when `force` redoes everything under a new config)."""
        stored = cls.load(uri, round_index)
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

    def record(self, stage: str, seconds: float, **info) -> None:
        self.stages[stage] = {"status": "done", "seconds": round(seconds, 3), "finished_at": time.time(), **info}
        self.save()

    def start(self, stage: str, **info) -> None:
        """Record `stage` as running (`info`: who runs it; r3v_ray/status.py reads it). Not done: a crash leaves
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
