"""Best-of-N selection, the method part of serving: prompts, the decision rule, and one async driver.

The driver takes a `generate(request, params) -> RequestOutput` coroutine, so the same code runs behind Ray
Serve (a deployment handle) and in-process (an engine called directly; see `select_in_process`), and the
benchmark's "direct call" is exactly what the endpoint computes.

Strategies:
- first:       the first candidate's answer.
- majority:    r3v_ray.method.selection.majority_vote over the extracted answers (ties: earliest first occurrence).
               With no extractable answer at all, the answer is None and the first candidate is returned.
- self_select: the model reads its N candidates with the training select prompt (r3v_ray.method.prompts) and answers
               greedily; its extracted answer is final (as in Select@N), even when no candidate holds it.
The chosen candidate is the first one whose extracted answer equals the final answer (None if none does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from r3v_ray.engines import Engine, GenerationRequest, RequestOutput, SamplingParams
from r3v_ray.method.selection import greedy_params, majority_vote, select_request
from r3v_ray.serving.errors import RequestError
from r3v_ray.serving.parsing import Query
from r3v_ray.tasks import Record, Task

Generate = Callable[[GenerationRequest, SamplingParams], Awaitable[RequestOutput]]
Measure = Callable[[GenerationRequest], Awaitable[int]]  # a prompt's length in tokens, image tokens included


def row_key(seed: int) -> str:
    """The request's seed goes into the row key, not into SamplingParams: the engine seeds each row from its key,
    so a request's candidates depend only on its content and seed, and concurrent requests with different seeds
    still share one engine call (the sampler batches by equal SamplingParams)."""
    return f"serve-{seed}"


@dataclass
class Candidate:
    index: int
    text: str
    answer: str | None
    n_tokens: int


@dataclass
class Selection:
    strategy: str
    answer: str | None  # the final answer
    chosen_index: int | None  # the candidate returned, None when no candidate holds the final answer
    text: str  # the chosen candidate's rationale, or the selector's output when no candidate was chosen
    finish_reason: str  # "stop" or "length" (the returned text hit its token limit)
    candidates: list[Candidate]
    votes: dict[str, int]
    selector_text: str | None = None
    selector_answer: str | None = None
    seed: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def query_record(query: Query) -> Record:
    # The task formats and scores questions from a Record; a served question has no id or gold answer.
    return Record(id="request", question=query.question, answer="", choices=query.choices)


def candidate_request(task: Task, query: Query) -> GenerationRequest:
    return GenerationRequest(task.cot_prompt(query_record(query)), query.image, row_key(query.params.seed))


def selector_request(task: Task, query: Query, texts: list[str]) -> GenerationRequest:
    """The self-select request as evaluation's Select@N builds it (r3v_ray/method/selection.py)."""
    return select_request(task.question_text(query_record(query)), texts, query.image, row_key(query.params.seed))


def decide(strategy: str, answers: list[str | None], selector_answer: str | None = None) -> tuple[str | None, int | None]:
    """(final answer, chosen candidate index) for extracted `answers`; pure."""
    if not answers:
        raise ValueError("no candidates to select from")
    if strategy == "first":
        return answers[0], 0
    if strategy == "majority":
        winner, _ = majority_vote(answers)
        return winner, (answers.index(winner) if winner is not None else 0)
    if strategy == "self_select":
        held = selector_answer is not None and selector_answer in answers
        return selector_answer, (answers.index(selector_answer) if held else None)
    raise ValueError(f"unknown strategy {strategy!r}")


def _check(out: RequestOutput, what: str, expect: int) -> None:
    if out.error:
        # The engine skips over-long prompts instead of truncating them, and refuses input it cannot take: the
        # request's fault, named by the field behind that prompt.
        raise RequestError(what, out.error, 400, "input_refused")
    if len(out.texts) != expect:
        raise RuntimeError(f"engine returned {len(out.texts)} texts for {what}, expected {expect}")


async def check_select_prompt_fits(task: Task, query: Query, measure: Measure, max_prompt_tokens: int) -> None:
    """Refuse a self-select query whose select prompt could overflow the engine's max_prompt_tokens once its N
    candidates are in, before any candidate is drawn: the question, image and frame, measured with N empty
    candidates, plus N candidates at their token limit."""
    frame = await measure(selector_request(task, query, [""] * query.n))
    room = (max_prompt_tokens - frame) // query.params.max_new_tokens
    need = frame + query.n * query.params.max_new_tokens
    if need > max_prompt_tokens:
        fits = f"at most n = {room} fits at this token limit" if room >= 1 else "the question alone leaves no room"
        raise RequestError("n", f"the select prompt could reach {need} tokens ({frame} for the question, image and "
                           f"frame, {query.n} candidates of up to {query.params.max_new_tokens} tokens), over the "
                           f"model's max_prompt_tokens {max_prompt_tokens}; {fits}: lower n or the candidates' token "
                           "limit, or use strategy majority", 400, "input_refused")


async def run_selection(task: Task, query: Query, generate: Generate, measure: Measure | None = None,
                        max_prompt_tokens: int | None = None) -> Selection:
    """The selection; with `measure` and `max_prompt_tokens`, a self-select query whose select prompt could not
    hold its candidates is refused before they are drawn."""
    if query.strategy == "self_select" and measure is not None and max_prompt_tokens is not None:
        await check_select_prompt_fits(task, query, measure, max_prompt_tokens)
    t0 = time.perf_counter()
    out = await generate(candidate_request(task, query), dataclasses.replace(query.params, seed=0))
    _check(out, "question", query.n)
    record = query_record(query)
    # Scored by the path labeling and evaluation score by (Task.score_record): an answer given as an option's
    # text counts as its letter here as it does in Select@N.
    answers = [task.score_record(record, t)[0] for t in out.texts]
    candidates = [Candidate(i, t, a, k) for i, (t, a, k) in enumerate(zip(out.texts, answers, out.n_tokens))]
    t1 = time.perf_counter()
    selector_text = selector_answer = None
    selector_tokens = 0
    if query.strategy == "self_select":
        sel = await generate(selector_request(task, query, out.texts), greedy_params(query.select_budget))
        _check(sel, "n", 1)  # the select prompt holds all N candidates: fewer or shorter ones fit
        selector_text, selector_tokens = sel.texts[0], sel.n_tokens[0]
        selector_answer = task.score_record(record, selector_text)[0]
    t2 = time.perf_counter()
    answer, chosen = decide(query.strategy, answers, selector_answer)
    if chosen is not None:
        text, hit_limit = candidates[chosen].text, candidates[chosen].n_tokens >= query.params.max_new_tokens
    else:
        text, hit_limit = selector_text or "", selector_tokens >= query.select_budget
    _, votes = majority_vote(answers)
    timings = {"sample_ms": 1000 * (t1 - t0), "select_ms": 1000 * (t2 - t1), "total_ms": 1000 * (t2 - t0)}
    return Selection(
        strategy=query.strategy,
        answer=answer,
        chosen_index=chosen,
        text=text,
        finish_reason="length" if hit_limit else "stop",
        candidates=candidates,
        votes=votes,
        selector_text=selector_text,
        selector_answer=selector_answer,
        seed=query.params.seed,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
    )


def select_in_process(engine: Engine, task: Task, query: Query) -> Selection:
    """The same selection with an engine in this process (no Ray, no HTTP): the benchmark's baseline."""

    async def generate(request: GenerationRequest, params: SamplingParams) -> RequestOutput:
        return engine.generate([request], params)[0]

    async def measure(request: GenerationRequest) -> int:
        return engine.prompt_tokens(request)

    return asyncio.run(run_selection(task, query, generate, measure, getattr(engine, "max_prompt_tokens", None)))
