"""Evaluation of a model on the test split in one sampling pass: the greedy rationales, the candidates and every
self-select pass, then the metrics of r3v_ray/method/metrics.py over them (docs/method.md, step 5).

Candidates are seeded per (question, sample index), so the first n of a curve's draw equal what an evaluation
drawing n would draw.
"""

from __future__ import annotations

from r3v_ray.method.metrics import (accuracy_at_1, faithfulness_at_1, majority_at_n, majority_curve, oracle_at_n,
                                    oracle_curve, select_file)
from r3v_ray.tasks.base import Record, Task


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
    from r3v_ray.pipeline.sampling import params_from_config, records_to_rows, sample
    from r3v_ray.run.store import join, read_parquet

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
