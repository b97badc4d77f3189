"""Evaluation of a model on the test split: Test@1, Oracle@N, Majority@N and Select@N (docs/method.md,
step 5), and the test-time scaling curve (the same metrics at several n, from one sampling pass).

The metric functions are pure (rows in, numbers out); `evaluate` is the thin plumbing that produces the rows with
the distributed sampler. Every test question counts in every denominator: a question whose prompt was skipped
(unreadable image, over-long prompt) is scored wrong and reported, never silently dropped.

The curve draws `evaluation.candidates` candidates per question once; Oracle@n and Majority@n read the first n of
them, and Select@n has the model read the same first n. Candidates are seeded per (question, sample index), so the
first n equal what an evaluation drawing n would draw. eval.json keeps the headline N's flat keys (`select@3`) and,
with a curve, a "scaling" object: {"candidates": 10, "oracle": {"1": ..., "10": ...}, "majority": {...},
"select": {"2": ..., "6": ...}} (JSON keys are strings; `curve_points` reads them back).
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


def evaluate(cfg, model_path: str, records: list[Record], task: Task, out_uri: str, round_index: int,
             greedy_only: bool = False, greedy: bool = True, timings: dict | None = None) -> dict:
    """Evaluate one model in one sampling pass (greedy, the candidates and every self-select pass in the same actors).

    The rationales behind every number stay under `out_uri` (greedy.parquet, samples.parquet, select.parquet and
    select-n<n>.parquet for the curve). `greedy_only`: Test@1 alone. `greedy=False`: no greedy pass and no Test@1,
    for scoring the candidates again at another temperature (greedy decoding does not depend on it). `timings`, when
    given, receives the sampling pass's wall time and its generating time (kept out of the metrics: eval.json holds
    results only).
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
        params = params_from_config(ev, seed=ev.seed, n=ev.candidates)
        samples_uri = join(out_uri, "samples.parquet")
        select_uris = {n: join(out_uri, select_file(n, ev.n)) for n in ev.select_ns}
        stats = sample(cfg, model_path, rows, samples_uri, params, round_index,
                       greedy_uri=greedy_uri if greedy else None, select_uris=select_uris,
                       select_max_new_tokens=ev.select_budget)
        sampled_rows = read_parquet(samples_uri).to_pylist()
        select_at = {n: accuracy_at_1(qids, read_parquet(uri).to_pylist()) for n, uri in select_uris.items()}
        metrics["n"] = ev.n
        metrics[f"oracle@{ev.n}"] = oracle_at_n(qids, sampled_rows, ev.n)
        metrics[f"majority@{ev.n}"] = majority_at_n(by_id, task, sampled_rows, ev.n)
        if ev.select:
            metrics[f"select@{ev.n}"] = select_at[ev.n]
        if ev.scaling:
            curve = {"candidates": ev.candidates, "oracle": oracle_curve(qids, sampled_rows, ev.candidates),
                     "majority": majority_curve(by_id, task, sampled_rows, ev.candidates)}
            if ev.select:
                curve["select"] = select_at  # ascending n (evaluation.select_ns)
            metrics["scaling"] = curve
        if any(stats.pass_skipped.values()):  # e.g. a self-select prompt over max_prompt_tokens: scored wrong
            metrics["pass_skipped"] = {kind: len(items) for kind, items in stats.pass_skipped.items() if items}
    if greedy:
        greedy_rows = read_parquet(greedy_uri).to_pylist()
        metrics["test@1"] = accuracy_at_1(qids, greedy_rows)
        metrics.update(faithfulness_at_1(by_id, task, greedy_rows))
    metrics["skipped"] = stats.skipped
    if timings is not None:
        timings.update(seconds=stats.seconds, generate_seconds=stats.generate_seconds)
    return metrics
