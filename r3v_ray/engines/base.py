"""The engine interface: generate n rationales for each (prompt, image) row with given sampling parameters."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy, really greedy (no sampling at all)
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    max_new_tokens: int = 64
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.greedy and self.n > 1:
            raise ValueError("greedy decoding with n > 1 would return n identical copies; use n=1")


@dataclass
class GenerationRequest:
    """One row: the user text (not yet chat-formatted), an optional decoded PIL image, and a stable key.

    The key (e.g. "question-id/round") seeds the row's sampling, so a row's samples do not depend on which
    batch or which actor it landed in.
    """

    prompt: str
    image: Any = None
    key: str = ""


@dataclass
class RequestOutput:
    texts: list[str] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    error: str | None = None  # set when the row was skipped (e.g. prompt too long); texts stay empty


def row_seed(seed: int, key: str, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}|{key}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Engine(ABC):
    @abstractmethod
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[RequestOutput]:
        """One RequestOutput per request, in order, each with params.n texts (or an error)."""

    def prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in tokens, image tokens included (used to skip over-long prompts, never truncate)."""
        raise NotImplementedError
