"""Evaluation of a model on the test split: Test@1, Oracle@N, Majority@N and Select@N (DESIGN.md step 5).

The metric functions are pure (rows in, numbers out); `evaluate` is the thin plumbing that produces the rows with
the distributed sampler. Every test question counts in every denominator: a question whose prompt was skipped
(unreadable image, over-long prompt) is scored wrong and reported, never silently dropped.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from r3v_ray.selection import majority_vote
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


def _share(question_ids: list[str], is_correct) -> float:
    if not question_ids:
        return 0.0
    return 100.0 * sum(1 for q in question_ids if is_correct(q)) / len(question_ids)


def evaluate(cfg, model_path: str, records: list[Record], task: Task, out_uri: str, round_index: int,
             greedy_only: bool = False, greedy: bool = True) -> dict:
    """Evaluate one model in one sampling pass (greedy, N samples and self-select in the same actors).

    The rationales behind every number stay under `out_uri` (greedy.parquet, samples.parquet, select.parquet).
    `greedy_only`: Test@1 alone. `greedy=False`: no greedy pass and no Test@1, for scoring the N samples again at
    another temperature (greedy decoding does not depend on it).
    """
    if greedy_only and not greedy:
        raise ValueError("greedy_only and greedy=False ask for nothing")
    from r3v_ray.sampling import params_from_config, records_to_rows, sample
    from r3v_ray.store import join, read_parquet

    by_id = {r.id: r for r in records}
    qids = list(by_id)
    ev = cfg.evaluation
    metrics: dict = {"round": round_index, "model": model_path, "num_questions": len(qids)}
    greedy_uri = join(out_uri, "greedy.parquet")
    rows = records_to_rows(records, task)
    if greedy_only:
        params = params_from_config(ev, seed=ev.seed, greedy=True)
        stats = sample(cfg, model_path, rows, greedy_uri, params, round_index)
    else:
        for row in rows:
            row["select_question"] = task.question_text(by_id[row["question_id"]])
        params = params_from_config(ev, seed=ev.seed, n=ev.n)
        samples_uri, select_uri = join(out_uri, "samples.parquet"), join(out_uri, "select.parquet")
        stats = sample(cfg, model_path, rows, samples_uri, params, round_index,
                       greedy_uri=greedy_uri if greedy else None, select_uri=select_uri if ev.select else None,
                       select_n=ev.n)
        sampled_rows = read_parquet(samples_uri).to_pylist()
        metrics["n"] = ev.n
        metrics[f"oracle@{ev.n}"] = oracle_at_n(qids, sampled_rows, ev.n)
        metrics[f"majority@{ev.n}"] = majority_at_n(by_id, task, sampled_rows, ev.n)
        if ev.select:
            metrics[f"select@{ev.n}"] = accuracy_at_1(qids, read_parquet(select_uri).to_pylist())
    if greedy:
        metrics["test@1"] = accuracy_at_1(qids, read_parquet(greedy_uri).to_pylist())
    metrics["skipped"] = stats.skipped
    return metrics
