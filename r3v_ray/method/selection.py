"""Best-of-N selection shared by evaluation (Majority@N, Select@N) and serving (its strategies): the vote with its
tie rule, the self-select request and the one greedy decoding setting, so the number reported in eval.json and the
answer the endpoint returns agree. Pure: no Ray, no torch.
"""

from __future__ import annotations

from r3v_ray.engines.base import GenerationRequest, SamplingParams
from r3v_ray.method.prompts import select_prompt


def greedy_params(max_new_tokens: int, seed: int = 0) -> SamplingParams:
    """The one greedy decoding: Test@1, the self-select answer in Select@N and in serving."""
    return SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed)


def select_request(question_text: str, candidates: list[str], image, key: str) -> GenerationRequest:
    """The self-select request exactly as training builds its prompt: the question, then the numbered candidates."""
    return GenerationRequest(select_prompt(question_text, candidates), image, key)


def majority_vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """Vote over extracted answers.

    Tie rule: the most common answer wins; among answers with equal counts, the one whose FIRST occurrence
    comes earliest in `answers` wins (candidate order is the sampling order, which is seeded, so the result is
    deterministic). None (an answer that could not be extracted) never votes; if every answer is None the
    winner is None.

    Returns (winner, counts) with counts in first-occurrence order.
    """
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None, counts
    best = max(counts.values())
    # dicts keep insertion order = first-occurrence order, so the first key at the top count is the tie winner.
    winner = next(answer for answer, count in counts.items() if count == best)
    return winner, counts
