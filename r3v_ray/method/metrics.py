"""The evaluation metrics (docs/method.md, step 5): Test@1, Oracle@N, Majority@N, faithfulness and the test-time
scaling curves. Pure: rationale rows in, numbers out (r3v_ray/pipeline/evaluate.py produces the rows).

Every test question counts in every denominator: a question whose prompt was skipped (unreadable image, over-long
prompt) is scored wrong and reported, never silently dropped. The curve draws `evaluation.candidates` candidates per
question once; Oracle@n and Majority@n read the first n of them, and Select@n has the model read the same first n.
eval.json keeps the headline N's flat keys (`select@3`) and, with a curve, a "scaling" object: {"candidates": 10,
"oracle": {"1": ..., "10": ...}, "majority": {...}, "select": {"2": ..., "6": ...}} (JSON keys are strings;
`curve_points` reads them back).
"""


from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from r3v_ray.method.selection import majority_vote
from r3v_ray.tasks.base import Record, Task


def _by_question(rows: Iterable[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row["question_id"]].append(row)
    for group in grouped.values():
        group.sort(key=lambda r: r["sample_index"])
    return grouped


def accuracy_at_1(question_ids: list[str], greedy_rows: Iterable[dict]) -> float:
    """Share of questions whose (single, greedy) rationale is correct."""
    grouped = _by_question(greedy_rows)
    return _share(question_ids, lambda q: bool(grouped.get(q)) and bool(grouped[q][0]["correct"]))


def oracle_at_n(question_ids: list[str], sampled_rows: Iterable[dict], n: int) -> float:
    """Share of questions with at least one correct rationale among the first n."""
    grouped = _by_question(sampled_rows)
    return _share(question_ids, lambda q: any(r["correct"] for r in grouped.get(q, [])[:n]))


def majority_at_n(records: dict[str, Record], task: Task, sampled_rows: Iterable[dict], n: int) -> float:
    """Share of questions where the vote over the first n extracted answers (selection.majority_vote) is correct."""
    grouped = _by_question(sampled_rows)

    def correct(q: str) -> bool:
        winner, _ = majority_vote([r["extracted_answer"] for r in grouped.get(q, [])[:n]])
        return task.check(winner, records[q].answer) if winner is not None else False

    return _share(list(records), correct)


def faithfulness_at_1(records: dict[str, Record], task: Task, greedy_rows: Iterable[dict]) -> dict[str, float]:
    """Does the answer follow the reasoning: over every test question's greedy rationale, the share whose final
    answer is what its own stated facts and the question's operation give (faithful@1), and the share whose stated
    facts are the image's (grounded@1). A question without a rationale counts in both denominators. {} where the
    task cannot check rationales (Task.faithfulness returns None)."""
    grouped = _by_question(greedy_rows)
    verdicts = {q: task.faithfulness(r, grouped[q][0]["rationale"] if grouped.get(q) else None)
                for q, r in records.items()}
    if all(v is None for v in verdicts.values()):
        return {}
    qids = list(records)
    return {"faithful@1": _share(qids, lambda q: verdicts[q] is not None and verdicts[q].consistent),
            "grounded@1": _share(qids, lambda q: verdicts[q] is not None and verdicts[q].grounded)}


def oracle_curve(question_ids: list[str], sampled_rows: Iterable[dict], max_n: int) -> dict[int, float]:
    """{n: Oracle@n} for n = 1..max_n, each on the first n candidates."""
    rows = list(sampled_rows)
    return {n: oracle_at_n(question_ids, rows, n) for n in range(1, max_n + 1)}


def majority_curve(records: dict[str, Record], task: Task, sampled_rows: Iterable[dict], max_n: int) -> dict[int, float]:
    """{n: Majority@n} for n = 1..max_n, each a vote over the first n candidates (Majority@1: the first one)."""
    rows = list(sampled_rows)
    return {n: majority_at_n(records, task, rows, n) for n in range(1, max_n + 1)}


def curve_points(metrics: dict, name: str) -> list[tuple[int, float]]:
    """[(n, value)] of one curve ("oracle", "majority", "select") of an eval.json, ascending n; [] without one."""
    points = (metrics.get("scaling") or {}).get(name) or {}
    return sorted((int(n), float(v)) for n, v in points.items())


def select_file(n: int, headline_n: int) -> str:
    """Where the Select@n rationales of an evaluation live: select.parquet for the headline N (as before the curve
    existed), select-n<n>.parquet for the curve's other n."""
    return "select.parquet" if n == headline_n else f"select-n{n}.parquet"


def _share(question_ids: list[str], is_correct) -> float:
    if not question_ids:
        return 0.0
    return 100.0 * sum(1 for q in question_ids if is_correct(q)) / len(question_ids)
