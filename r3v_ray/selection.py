"""Pure best-of-N selection rules shared by evaluation (Majority@N) and serving (the `majority` strategy).

One function, one tie rule, so the number reported in eval.json and the answer the endpoint returns agree.
"""

from __future__ import annotations


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
