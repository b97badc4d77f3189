"""Reflection training data (docs/method.md, step 3): pure, seeded functions, no Ray and no torch.

Input is the pool of labeled samples of all rounds so far, one dict per rationale:
    {question_id, round, sample_index, rationale, extracted_answer, correct}
Output is a list of examples, one dict each:
    {task: warmup|sft|refine|select, question_id, prompt (user text), target (assistant text), image}

Every random choice draws from an RNG seeded by (cfg.seed, round, question id), so the data of one question does
not depend on which other questions are in the pool, and the same inputs always give the same examples.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from r3v_ray.config import ReflectConfig
from r3v_ray.method.prompts import CAPTION_PROMPTS, refine_prompt, select_prompt
from r3v_ray.tasks.base import Record, Task

TASKS = ("warmup", "sft", "refine", "select")  # the kinds of training example
# The loss terms (docs/method.md, step 4) and which each kind trains: warm-up counts with SFT.
TERMS = ("sft", "refine", "select")
TERM_OF_TASK: dict[str, str] = {"warmup": "sft", "sft": "sft", "refine": "refine", "select": "select"}
# The losses a training step reports: the weighted total, then each term's own token mean.
LOSS_KEYS = ("loss",) + tuple(f"loss_{t}" for t in TERMS)
POOL_FIELDS = ("question_id", "round", "sample_index", "rationale", "extracted_answer", "correct")


class PoolError(ValueError):
    """A pool row that cannot be used; the message names the question id and the field."""


@dataclass(frozen=True)
class Sample:
    question_id: str
    round: int
    sample_index: int
    rationale: str
    positive: bool

    @property
    def age_key(self) -> tuple[int, int]:
        return (self.round, self.sample_index)  # larger is newer


@dataclass
class QuestionSamples:
    """One question's usable positives and negatives, each list newest first."""

    positives: list[Sample] = field(default_factory=list)
    negatives: list[Sample] = field(default_factory=list)
    short_positives: int = 0  # correct but too short to hold reasoning: used neither way


def example(task: str, question_id: str, prompt: str, target: str, image: str | None) -> dict[str, Any]:
    return {"task": task, "question_id": question_id, "prompt": prompt, "target": target, "image": image}


def _rng(*parts: Any) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and Python runs.
    return random.Random("|".join(str(p) for p in parts))


# -- warm-up --------------------------------------------------------------------------------------------------


def build_warmup_data(records: list[Record], task: Task, cfg: ReflectConfig) -> list[dict]:
    """Direct-answer QA pairs for every record, teacher CoT examples for `cfg.warmup_cot` of the records that have
    a rationale (a seeded choice; None: all of them), and `cfg.warmup_captions` perception examples per record
    whose task gives a caption (each under a different caption prompt, a seeded choice)."""
    examples = [
        example("warmup", r.id, task.direct_prompt(r), task.format_answer(r.answer), r.image) for r in records
    ]
    with_rationale = [r for r in records if r.rationale and r.rationale.strip()]
    chosen = with_rationale
    if cfg.warmup_cot is not None and cfg.warmup_cot < len(with_rationale):
        keep = set(_rng(cfg.seed, "warmup-cot").sample(range(len(with_rationale)), cfg.warmup_cot))
        chosen = [r for i, r in enumerate(with_rationale) if i in keep]  # keeps the records' order
    examples += [example("warmup", r.id, task.cot_prompt(r), r.rationale, r.image) for r in chosen]
    return examples + caption_examples(records, task, cfg.warmup_captions, cfg.seed)


def caption_examples(records: list[Record], task: Task, n: int, seed: int, stream: str = "caption") -> list[dict]:
    """`n` perception examples per record whose task gives a caption, each under a different caption prompt (a
    choice seeded by `seed`, `stream` and the record's id)."""
    out = []
    for r in records:
        caption = task.caption(r) if n else None
        if caption:
            out += [example("warmup", r.id, p, caption, r.image)
                    for p in _rng(seed, stream, r.id).sample(CAPTION_PROMPTS, n)]
    return out


# -- the pool ---------------------------------------------------------------------------------------------------


def _parse_row(index: int, row: dict) -> tuple[str, int, int, str, bool]:
    qid = row.get("question_id")
    if qid is None or str(qid) == "":
        raise PoolError(f"pool row {index}: field 'question_id' is missing")
    missing = [f for f in POOL_FIELDS if f not in row]
    if missing:
        raise PoolError(f"pool row {index} (question {qid!r}): missing field(s) {missing}")
    try:
        rnd, sidx = int(row["round"]), int(row["sample_index"])
    except (TypeError, ValueError):
        raise PoolError(f"pool row {index} (question {qid!r}): 'round' and 'sample_index' must be integers") from None
    rationale = row["rationale"] if isinstance(row["rationale"], str) else ""
    # An answer that could not be extracted is a negative, whatever `correct` says: never a guess.
    positive = bool(row["correct"]) and row["extracted_answer"] not in (None, "")
    return str(qid), rnd, sidx, rationale, positive


def group_pool(pool: Iterable[dict], records: dict[str, Record], min_rationale_chars: int) -> dict[str, QuestionSamples]:
    """Samples per question id (in the records' order), positives and negatives each newest first."""
    by_question: dict[str, QuestionSamples] = {}
    seen: set[tuple[str, int, int]] = set()
    for index, row in enumerate(pool):
        qid, rnd, sidx, rationale, positive = _parse_row(index, row)
        if qid not in records:
            raise PoolError(f"pool row {index}: question id {qid!r} is not among the training records")
        if (qid, rnd, sidx) in seen:  # two rows with one key would make "newest" ambiguous
            raise PoolError(f"pool row {index}: duplicate sample (question {qid!r}, round {rnd}, sample {sidx})")
        seen.add((qid, rnd, sidx))
        group = by_question.setdefault(qid, QuestionSamples())
        sample = Sample(qid, rnd, sidx, rationale, positive)
        if not positive:
            group.negatives.append(sample)
        elif len(rationale.strip()) < min_rationale_chars:
            group.short_positives += 1
        else:
            group.positives.append(sample)
    for group in by_question.values():
        group.positives.sort(key=lambda s: s.age_key, reverse=True)
        group.negatives.sort(key=lambda s: s.age_key, reverse=True)
    return {qid: by_question[qid] for qid in records if qid in by_question}


# -- self-select candidates ------------------------------------------------------------------------------------


def select_counts(n_pos: int, n_neg: int, cfg: ReflectConfig, rng: random.Random) -> tuple[int, int]:
    """(positives, negatives) in one candidate set; needs n_pos >= 1 and n_neg >= 1.

    fixed: N = cfg.select_n with 1 <= positives <= N-1, chosen among the splits the pool allows (N=3: two
    positives and one negative, or one and two). mixed: N from [mixed_min_n, mixed_max_n], positives from
    [1, min(#pos, N-1)] (and enough negatives left). When the pool holds fewer than N samples, all are used.
    """
    total = n_pos + n_neg
    if cfg.select_variant == "fixed":
        n = cfg.select_n
    else:
        n = rng.randint(cfg.mixed_min_n, max(cfg.mixed_min_n, min(cfg.mixed_max_n, total)))
    if total <= n:
        return n_pos, n_neg
    lo, hi = max(1, n - n_neg), min(n_pos, n - 1)  # lo <= hi whenever total >= n and both are >= 1
    k = rng.randint(lo, hi)
    return k, n - k


def select_candidates(group: QuestionSamples, cfg: ReflectConfig, rng: random.Random) -> list[Sample]:
    k_pos, k_neg = select_counts(len(group.positives), len(group.negatives), cfg, rng)
    chosen = rng.sample(group.positives, k_pos) + rng.sample(group.negatives, k_neg)
    rng.shuffle(chosen)
    return chosen


# -- one round's training set -------------------------------------------------------------------------------------


def build_training_data(
    pool: list[dict], records: dict[str, Record], task: Task, cfg: ReflectConfig, round_index: int
) -> tuple[list[dict], dict]:
    """(examples, stats): self-CoT, self-refine and self-select examples from the pool, plus the warm-up data.

    self-CoT: the newest positive of each question with one. self-refine: (newest negative -> newest positive)
    for each question with both. self-select: a shuffled candidate set of each question with both, target the
    gold answer. Samples whose question id is not in `records` are an error naming the id.
    """
    groups = group_pool(pool, records, cfg.min_rationale_chars)
    examples: list[dict] = []
    select_sizes: Counter = Counter()
    for qid, group in groups.items():
        record = records[qid]
        if not group.positives:
            continue
        best = group.positives[0]
        examples.append(example("sft", qid, task.cot_prompt(record), best.rationale, record.image))
        if not group.negatives:
            continue
        if cfg.use_refine:
            prompt = refine_prompt(task.cot_prompt(record), group.negatives[0].rationale)
            examples.append(example("refine", qid, prompt, best.rationale, record.image))
        if cfg.use_select:
            candidates = select_candidates(group, cfg, _rng(cfg.seed, round_index, qid))
            select_sizes[len(candidates)] += 1
            prompt = select_prompt(task.question_text(record), [c.rationale for c in candidates])
            examples.append(example("select", qid, prompt, task.format_answer(record.answer), record.image))
    examples += build_warmup_data(list(records.values()), task, cfg)
    return examples, pool_stats(groups, records, examples, round_index, select_sizes)


def pool_stats(
    groups: dict[str, QuestionSamples], records: dict[str, Record], examples: list[dict], round_index: int,
    select_sizes: Counter | None = None,
) -> dict:
    counts = Counter(e["task"] for e in examples)
    no_pos = sum(1 for g in groups.values() if not g.positives)
    all_pos = sum(1 for g in groups.values() if g.positives and not g.negatives)
    return {
        "round": round_index,
        "questions": len(records),
        "questions_sampled": len(groups),
        "questions_without_samples": len(records) - len(groups),
        "questions_no_positive": no_pos,
        "questions_some_positive": len(groups) - no_pos - all_pos,
        "questions_all_positive": all_pos,
        "samples": sum(len(g.positives) + len(g.negatives) + g.short_positives for g in groups.values()),
        "positives": sum(len(g.positives) for g in groups.values()),
        "negatives": sum(len(g.negatives) for g in groups.values()),
        "short_positives_skipped": sum(g.short_positives for g in groups.values()),
        "examples": {t: counts.get(t, 0) for t in TASKS},
        "examples_total": len(examples),
        "select_candidates": {str(k): v for k, v in sorted((select_sizes or {}).items())},
    }
