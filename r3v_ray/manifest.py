"""A round's manifest.json: which stages finished, with what config, when, and what they reported.

A stage is done only once its outputs are written (atomically) and then recorded here, so a crash between the
two just redoes the stage. A manifest written under a different config is refused unless forced.
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
    config_digest: str
    round: int
    stages: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, uri: str, config_digest: str, round_index: int, force: bool = False) -> "Manifest":
        if not store.exists(uri):
            return cls(uri, config_digest, round_index)
        data = store.read_json(uri)
        if data.get("config_digest") != config_digest:
            if not force:
                raise ConfigChangedError(
                    f"{uri} was written under config {data.get('config_digest')}, but this config is {config_digest}. "
                    "Finished stages would not match the new settings: re-run with --force to redo them under the "
                    "new config, or give the run a new `name`."
                )
            return cls(uri, config_digest, round_index)  # forced: every stage is redone
        return cls(uri, config_digest, round_index, data.get("stages", {}))

    def done(self, stage: str) -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    def record(self, stage: str, seconds: float, **info) -> None:
        self.stages[stage] = {"status": "done", "seconds": round(seconds, 3), "finished_at": time.time(), **info}
        self.save()

    def save(self) -> None:
        store.write_json(
            self.uri, {"config_digest": self.config_digest, "round": self.round, "stages": self.stages}
        )
