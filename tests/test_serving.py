"""The self-selection endpoint against a running Ray Serve app on 127.0.0.1 (one app for the module).

The served checkpoint is the tiny model, briefly fine-tuned here (real torch, a few seconds) so that its sampled
rationales end in extractable answers ("3" or "5") and its self-select answer is "7": then first, majority and
self_select give different answers and each strategy's rule can be checked on real model output.
"""

from __future__ import annotations

import base64
import collections
import io
import itertools
import json
import logging
import os
import random
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from conftest import free_port
from PIL import Image

from r3v_ray.config import ServeConfig, config_from_dict
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.method.prompts import select_prompt
from r3v_ray.method.selection import majority_vote
from r3v_ray.serving import checkpoint as ckpt
from r3v_ray.serving.batching import generate_grouped
from r3v_ray.serving.errors import RequestError
from r3v_ray.serving.parsing import build_query, parse_chat, parse_select
from r3v_ray.serving.selector import decide, row_key, select_in_process
from r3v_ray.tasks import Record, get_task

QUESTION = "How many red objects are there?"
RATIONALES = ["There are 3 red objects.\nAnswer: 3", "There are 5 red objects.\nAnswer: 5"]
SELECTOR_TARGET = "Answer: 7"
MAX_NEW = 24
MAX_NEW_LIMIT = 32  # bounds what a fuzzed request can ask the engine for
MAX_IMAGE_BYTES = 64_000  # holds a PNG of one colour at the pixel limit (4096 x 4096: 58,637 bytes)
MAX_CHOICE = 200
MAX_PROMPT = 2000
TASK = get_task("synthetic")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"  # Pillow would hand it to Ghostscript


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _teach(src: str, out: str, image: Image.Image, steps: int = 40) -> None:
    """Fine-tune the tiny model: CoT prompt -> one of two rationales (2:1), select prompt -> SELECTOR_TARGET."""
    from r3v_ray.models import chat_example, load_model_and_processor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model, proc = load_model_and_processor(src)
        record = Record(id="q", question=QUESTION, answer="")
        rng = random.Random(0)
        pairs = [(TASK.cot_prompt(record), t) for t in (RATIONALES[0], RATIONALES[0], RATIONALES[1])]
        for _ in range(4):
            cands = [rng.choice(RATIONALES + ["no idea"]) for _ in range(rng.randint(2, 4))]
            pairs.append((select_prompt(TASK.question_text(record), cands), SELECTOR_TARGET))
        batch = []
        for prompt, target in pairs:
            p, c = chat_example(proc, prompt, target)
            enc = proc(text=[p + c], images=[image], return_tensors="pt")
            labels = enc["input_ids"].clone()
            labels[:, : proc(text=[p], images=[image], return_tensors="pt")["input_ids"].shape[1]] = -100
            batch.append((enc, labels))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            for enc, labels in batch:
                (model(**enc, labels=labels).loss / len(batch)).backward()
            opt.step()
        model.eval()
        shutil.copytree(src, out)
        model.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image():
    return TASK.render(next(TASK.generate_records("test", 1, 0)))


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, image, tmp_path_factory):
    """A run directory whose newest round (1) holds the taught checkpoint."""
    root = tmp_path_factory.mktemp("serve-run") / "servetest"
    (root / "round-000").mkdir(parents=True)  # a round without a checkpoint: skipped when picking the newest
    _teach(tiny_model_dir, str(root / "round-001" / "checkpoint"), image)
    return str(root)


BODY_TIMEOUT_S = 3.0
KEY, FILE_KEY = "sk-test-config-key", "sk-test-file-key"  # one key from the config, one from the keys file
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(run_dir, tmp_path_factory):
    """The app started as `r3v serve --run-dir D` starts it, with no Ray running yet in this process (so `r3v
    serve` starts its own, as it does on a laptop) and API keys from the config and from a keys file. Torn down
    (Serve, then the Ray it started) by this module."""
    import argparse
    import os

    import ray
    from ray import serve

    from r3v_ray.serving.auth import KEYS_FILE_ENV
    from r3v_ray.serving.launch import add_serve_args, start

    assert not ray.is_initialized()
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key a line\n\n{FILE_KEY}\n")
    port = free_port()
    overrides = [
        f"serve.max_new_tokens={MAX_NEW}",
        f"serve.max_new_tokens_limit={MAX_NEW_LIMIT}",
        "evaluation.select_max_new_tokens=8",
        "serve.max_n=4",
        f"serve.max_image_bytes={MAX_IMAGE_BYTES}",
        f"serve.max_choice_chars={MAX_CHOICE}",
        "serve.health_check_period_s=1",
        f"serve.max_prompt_chars={MAX_PROMPT}",
        "serve.app_name=r3v-test",
        f"serve.body_timeout_s={BODY_TIMEOUT_S}",
        f"serve.api_keys=[{KEY}]",
    ]
    argv = ["--run-dir", run_dir, "--port", str(port)] + [a for o in overrides for a in ("--set", o)]
    args = add_serve_args(argparse.ArgumentParser()).parse_args(argv)
    os.environ[KEYS_FILE_ENV] = str(keys_file)
    try:
        url, model_id = start(args)
    finally:
        del os.environ[KEYS_FILE_ENV]
    assert url == f"http://127.0.0.1:{port}"
    yield {"url": url, "model": model_id}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(run_dir):
    return create_engine("hf", ckpt.resolve(run_dir=run_dir).checkpoint, torch_threads=1)


def _select(url: str, **body) -> requests.Response:
    return requests.post(f"{url}/v1/select", json=body, headers=AUTH, timeout=120)


# -- pure parts -------------------------------------------------------------------------------------------
def test_decide_rules():
    answers = ["5", None, "3", "3"]
    assert decide("first", answers) == ("5", 0)
    assert decide("majority", answers) == ("3", 2)
    assert decide("majority", [None, None]) == (None, 0)  # nothing to vote on: the first candidate, no answer
    assert decide("self_select", answers, "3") == ("3", 2)
    assert decide("self_select", answers, "7") == ("7", None)  # the model's answer is final, even if unheld
    assert decide("self_select", [None], None) == (None, None)


def test_parse_select_applies_defaults_and_limits(image):
    cfg = ServeConfig(max_n=4)
    q = parse_select({"question": " Q? ", "image": _png_b64(image), "sampling": {"seed": 9, "top_k": 5}}, cfg)
    assert (q.question, q.n, q.strategy, q.image.size) == ("Q?", cfg.default_n, cfg.default_strategy, image.size)
    assert (q.params.seed, q.params.top_k, q.params.temperature) == (9, 5, cfg.temperature)
    with pytest.raises(RequestError, match="sampling.top_p"):
        parse_select({"question": "Q", "sampling": {"top_p": 0}}, cfg)
    with pytest.raises(RequestError, match="answer_choices"):
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "Q"}], "answer_choices": []}, cfg, "m")
    assert build_query(cfg, "Q", None, None, 1, "first", temperature=0.0).params.greedy


def test_parse_reduces_a_large_image_to_the_pixel_budget_before_it_leaves_the_ingress():
    cfg = ServeConfig(image_pixel_budget=50_176)
    big = _png_b64(Image.new("RGB", (4096, 4096), (30, 60, 90)))
    query = parse_select({"question": "Q", "image": big}, cfg)
    assert 50_176 <= query.image.width * query.image.height < 4 * 50_176 and query.image.getpixel((0, 0)) == (30, 60, 90)
    assert parse_select({"question": "Q", "image": big}, ServeConfig()).image.size == (4096, 4096)  # no budget


def test_the_pixel_budget_is_the_models_unless_serve_sets_one(run_dir):
    from r3v_ray.config import RunConfig
    from r3v_ray.serving.app import image_budget

    served = ckpt.resolve(run_dir=run_dir)
    assert image_budget(RunConfig(), served) == 50_176  # the tiny model's processor: 64 visual tokens of 28 x 28
    assert image_budget(RunConfig.model_validate({"model": {"max_pixels": 1000}}), served) == 1000
    assert image_budget(RunConfig.model_validate({"serve": {"image_pixel_budget": 7}}), served) == 7


def test_chat_fields_that_ask_for_nothing_are_accepted():
    """An OpenAI field the server cannot honour passes when its value asks for nothing (null, the off value)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "Q"}], "stream": False, "stop": None,
            "logprobs": False, "presence_penalty": 0.0, "frequency_penalty": 0, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "user": "end-user-7"}
    assert parse_chat(body, ServeConfig(), "m").question == "Q"
    with pytest.raises(RequestError, match="^top_logprobs: not supported"):
        parse_chat({**body, "top_logprobs": False}, ServeConfig(), "m")  # false is not the number 0


def test_chat_model_answers_to_its_aliases_and_an_unknown_id_is_a_404_naming_the_served_one(tmp_path):
    from r3v_ray.serving.app import model_info

    cfg = config_from_dict({"name": "demo"})
    info = model_info(cfg, ckpt.ServedModel(str(tmp_path / "runs/demo/round-002/checkpoint"), 2, str(tmp_path / "runs/demo")))
    assert (info["id"], info["aliases"]) == ("demo-round-2", ["demo", "r3v"])
    body = lambda model: {"model": model, "messages": [{"role": "user", "content": "Q"}]}  # noqa: E731
    for name in ("demo-round-2", "demo", "r3v"):
        assert parse_chat(body(name), cfg.serve, info["id"], info["aliases"]).question == "Q"
    with pytest.raises(RequestError, match="'gpt-4o' is not served here; this server serves 'demo-round-2' "
                                           r"\(also answered as 'demo', 'r3v'\)") as err:
        parse_chat(body("gpt-4o"), cfg.serve, info["id"], info["aliases"])
    assert err.value.status == 404


def test_checkpoint_resolution(run_dir, tmp_path):
    served = ckpt.resolve(run_dir=run_dir)
    assert (served.round, served.model_id()) == (1, "servetest-round-1")
    assert ckpt.resolve(checkpoint=served.checkpoint).round == 1  # the round is read from the path
    with pytest.raises(ckpt.CheckpointError, match="round 0 has no model checkpoint"):
        ckpt.resolve(run_dir=run_dir, round_=0)
    with pytest.raises(ckpt.CheckpointError, match="either"):
        ckpt.resolve()
    from r3v_ray.run.cache import localize  # file:// is a local disk: used in place (remote URIs: tests/test_storage.py)

    assert localize(f"file://{os.path.abspath(served.checkpoint)}") == os.path.abspath(served.checkpoint)


def test_serve_run_builder_and_replicas_from_config(run_dir):
    from ray.serve import Application

    from r3v_ray.config import config_from_dict
    from r3v_ray.serving.app import app_builder, sampler_options

    assert isinstance(app_builder({"run_dir": run_dir, "round": "1", "serve.max_n": "4"}), Application)
    with pytest.raises(ckpt.CheckpointError):
        app_builder({"run_dir": run_dir, "round": "0"})
    auto = sampler_options(config_from_dict({"serve": {"num_replicas": "auto", "min_replicas": 0, "max_replicas": 3}}))
    assert auto["num_replicas"] == "auto"
    assert auto["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 2.0}
    fixed = sampler_options(config_from_dict({"serve": {"num_replicas": 2, "gpus_per_replica": 1}}))
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"]["num_gpus"] == 1


def test_grouped_generation_matches_separate_calls(engine, image):
    a = SamplingParams(n=2, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=8, seed=1)
    b = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    reqs = [GenerationRequest(f"{QUESTION} {i}", image, f"k{i}") for i in range(3)]
    items = [(reqs[0], a), (reqs[1], b), (reqs[2], a)]
    grouped = generate_grouped(engine, items)
    assert [o.texts for o in grouped] == [engine.generate([r], p)[0].texts for r, p in items]
    # a request the engine refuses fails alone; its batch neighbours still get their text
    bad = GenerationRequest(QUESTION, Image.new("RGB", (2, 600)), "bad")
    mixed = generate_grouped(engine, [(reqs[0], b), (bad, b)])
    assert mixed[0].texts and not mixed[1].texts and "refused" in mixed[1].error
    # ... and so does one the tokenizer raises on (a lone surrogate: TypeError), wherever it is in the batch
    odd = GenerationRequest(f"{QUESTION} \ud800", image, "odd")
    mixed = generate_grouped(engine, [(reqs[0], b), (odd, b), (reqs[2], b)])
    assert "TypeError" in mixed[1].error and not mixed[1].texts
    assert [mixed[0].texts, mixed[2].texts] == [engine.generate([r], b)[0].texts for r in (reqs[0], reqs[2])]


# -- the running app ------------------------------------------------------------------------------------------
def _queue_calls(wait_s: float):
    """An EngineQueue over a `run` that records each batch and blocks until released (a threading.Event per call)."""
    import asyncio
    import threading

    from r3v_ray.serving.batching import EngineQueue

    calls, gates = [], []

    def run(items):
        gate = threading.Event()
        calls.append(list(items))
        gates.append(gate)
        gate.wait(30)
        if "boom" in items:
            raise RuntimeError("this batch failed")
        return [f"out-{i}" for i in items]

    return EngineQueue(run, max_batch_size=3, wait_s=wait_s), calls, gates, asyncio, threading


def test_an_overflowing_select_prompt_is_refused_before_candidates_are_drawn(engine, image):
    """N candidates at their token limit would not fit the select prompt: refused naming n, no engine call made;
    a query that fits runs both passes."""
    import asyncio

    from r3v_ray.serving.selector import run_selection

    calls = []

    async def generate(request, params):
        calls.append(params.n)
        return engine.generate([request], params)[0]

    async def measure(request):
        return engine.prompt_tokens(request)

    cfg = ServeConfig(max_n=8)
    over = build_query(cfg, QUESTION, image, None, 8, "self_select", max_new_tokens=300, seed=1)
    with pytest.raises(RequestError, match=r"^n: the select prompt could reach \d+ tokens .* over the model's "
                                           r"max_prompt_tokens 2048; at most n = \d fits") as caught:
        asyncio.run(run_selection(TASK, over, generate, measure, engine.max_prompt_tokens))
    assert caught.value.status == 400 and calls == []
    fits = build_query(cfg, QUESTION, image, None, 2, "self_select", max_new_tokens=8, seed=1)
    assert asyncio.run(run_selection(TASK, fits, generate, measure, engine.max_prompt_tokens)).selector_text is not None
    assert calls == [2, 1]


def test_engine_queue_runs_a_lone_request_at_once_and_batches_those_that_wait():
    # A lone request never waits out wait_s (it would outlast the scenario's bound); under load, a batch waits
    # until as many requests are queued as the last call carried.
    queue, calls, gates, asyncio, _ = _queue_calls(wait_s=600.0)

    async def scenario():
        first = asyncio.ensure_future(queue.submit("a"))
        while not calls:  # the engine took "a" alone, with nothing else queued
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(queue.submit(x)) for x in "bcde"]  # queue behind the busy engine
        await asyncio.sleep(0.01)
        assert calls == [["a"]]
        gates[0].set()
        assert await first == "out-a"
        while len(calls) < 2:
            await asyncio.sleep(0.001)
        assert calls[1] == ["b", "c", "d"]  # max_batch_size 3
        gates[1].set()
        await asyncio.gather(*rest[:3])
        await asyncio.sleep(0.01)
        assert len(calls) == 2  # "e" waits for company: the last call carried 3
        rest += [asyncio.ensure_future(queue.submit(x)) for x in "fg"]
        while len(calls) < 3:
            await asyncio.sleep(0.001)
        assert calls[2] == ["e", "f", "g"]
        gates[2].set()
        return await asyncio.gather(*rest)

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [f"out-{x}" for x in "bcdefg"]
    assert (queue.batches, queue.items) == (3, 7)


def test_engine_queue_failure_reaches_only_its_batch_and_cancelled_requests_are_dropped():
    queue, calls, gates, asyncio, _ = _queue_calls(wait_s=0.0)

    async def scenario():
        first = asyncio.ensure_future(queue.submit("boom"))
        while not calls:
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(queue.submit("gone"))
        later = asyncio.ensure_future(queue.submit("z"))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client went away while it queued: never sent to the engine
        gates[0].set()
        with pytest.raises(RuntimeError, match="this batch failed"):
            await first
        while len(calls) < 2:
            await asyncio.sleep(0.001)
        gates[1].set()
        return await later

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == "out-z"
    assert calls == [["boom"], ["z"]]


def test_healthz_and_models_name_checkpoint_and_round(served, run_dir):
    assert requests.get(f"{served['url']}/healthz", timeout=30).json()["status"] == "ok"  # no key needed
    (entry,) = requests.get(f"{served['url']}/v1/models", headers=AUTH, timeout=30).json()["data"]
    assert entry["id"] == served["model"] == "servetest-round-1"
    assert entry["round"] == 1 and entry["checkpoint"].endswith("round-001/checkpoint") and entry["run_dir"] == run_dir


def _seed_where_first_is_not_majority(engine, image) -> int:
    # Candidates are a function of the seed alone, so the test can pick a seed where the two rules disagree.
    record = Record(id="q", question=QUESTION, answer="")
    for seed in range(40):
        params = SamplingParams(n=4, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=MAX_NEW)
        out = engine.generate([GenerationRequest(TASK.cot_prompt(record), image, row_key(seed))], params)[0]
        answers = [TASK.extract_answer(t) for t in out.texts]
        winner, votes = majority_vote(answers)
        if winner is not None and answers[0] != winner and votes[winner] > 2:
            return seed
    raise AssertionError("no seed among 40 where first and majority disagree; is the taught model wrong?")


def test_each_strategy_over_http_follows_its_rule(served, engine, image):
    seed = _seed_where_first_is_not_majority(engine, image)
    body = {"question": QUESTION, "image": _png_b64(image), "n": 4, "sampling": {"seed": seed}}
    got = {s: _select(served["url"], strategy=s, **body).json() for s in ("first", "majority", "self_select")}
    cands = got["first"]["candidates"]
    answers = [c["answer"] for c in cands]
    assert all(g["candidates"] == cands and g["seed"] == seed for g in got.values())  # seeded: same candidates
    assert got["first"]["answer"] == answers[0] and got["first"]["chosen_index"] == 0
    winner, votes = majority_vote(answers)
    assert got["majority"]["answer"] == winner != answers[0]
    assert got["majority"]["votes"] == votes and cands[got["majority"]["chosen_index"]]["answer"] == winner
    sel = got["self_select"]
    assert sel["selector_answer"] == sel["answer"] == "7" and sel["chosen_index"] is None
    assert sel["text"] == sel["selector_text"] and got["first"]["selector_text"] is None
    assert all(g["timings_ms"]["total_ms"] > 0 for g in got.values())
    # The selection ran in the sampler replica, in the one handle call the ingress waited for.
    assert all(g["timings_ms"]["ingress_ms"] >= g["timings_ms"]["total_ms"] for g in got.values())


def test_http_answer_equals_in_process_selection(served, engine, image):
    body = {"question": QUESTION, "image": _png_b64(image), "n": 3, "strategy": "self_select", "sampling": {"seed": 5}}
    over_http = _select(served["url"], **body).json()
    query = parse_select(body, ServeConfig(max_new_tokens=MAX_NEW), select_max_new_tokens=8)
    direct = select_in_process(engine, TASK, query)
    assert [c["text"] for c in over_http["candidates"]] == [c.text for c in direct.candidates]
    assert (over_http["answer"], over_http["selector_text"]) == (direct.answer, direct.selector_text)


def test_concurrent_requests_are_batched_without_mixing_answers(served, image):
    bodies = [
        {"question": QUESTION, "image": _png_b64(image), "n": 2, "strategy": "first", "sampling": {"seed": s}}
        for s in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: _select(served["url"], **b).json(), bodies))
    alone = [_select(served["url"], **b).json() for b in bodies]
    assert [t["candidates"] for t in together] == [a["candidates"] for a in alone]


def test_openai_client_chat_completion_and_models(served, image):
    import openai

    client = openai.OpenAI(base_url=f"{served['url']}/v1", api_key=FILE_KEY, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [served["model"]]
    resp = client.chat.completions.create(
        model=served["model"],
        messages=[
            {"role": "system", "content": "ignored: the served prompt is the trained one"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png_b64(image)}"}},
                ],
            },
        ],
        n=3,
        max_tokens=MAX_NEW,
        seed=11,
        extra_body={"strategy": "majority"},
    )
    selection = resp.model_extra["selection"]
    assert resp.model == served["model"] and len(resp.choices) == 1
    assert selection["strategy"] == "majority" and selection["n"] == 3 and selection["seed"] == 11
    winner, _ = majority_vote([c["answer"] for c in selection["candidates"]])
    assert selection["answer"] == winner and winner is not None
    assert TASK.extract_answer(resp.choices[0].message.content) == winner
    with pytest.raises(openai.BadRequestError, match="n: must be between 1 and 4"):
        client.chat.completions.create(model=served["model"], messages=[{"role": "user", "content": "Q"}], n=9)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Q"}])


def test_selection_scores_answers_as_evaluation_does():
    """Serving extracts with the record-aware scorer (Task.score_record), as labeling and Select@N do: on a
    multiple-choice task an answer given as an option's text counts as its letter."""
    import asyncio

    from r3v_ray.engines import RequestOutput
    from r3v_ray.serving.selector import query_record, run_selection

    geoqa = get_task("geoqa")
    query = build_query(ServeConfig(), "What is the angle?", None, ["30°", "45°", "60°"], 3, "majority", seed=1)
    texts = ["so 45 degrees.\nAnswer: 45°", "Answer: B", "Answer: 60°"]

    async def canned(request, params):  # the engine's texts, fixed: this checks the scoring, not the model
        return RequestOutput(texts=texts, n_tokens=[5, 5, 5])

    selection = asyncio.run(run_selection(geoqa, query, canned))
    assert [c.answer for c in selection.candidates] == ["B", "B", "C"]
    assert [c.answer for c in selection.candidates] == [geoqa.score_record(query_record(query), t)[0] for t in texts]
    assert (selection.answer, selection.chosen_index, selection.votes) == ("B", 0, {"B": 2, "C": 1})


# -- bad requests: a 4xx naming the problem, never a 500 ---------------------------------------------------------
def _bad_cases() -> list:
    png = _png_b64(Image.new("RGB", (8, 8)))
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="ICO")
    ico = base64.b64encode(buf.getvalue()).decode()
    big = base64.b64encode(random.Random(0).randbytes(MAX_IMAGE_BYTES + 1000)).decode()
    user = lambda content: {"model": "servetest-round-1", "messages": [{"role": "user", "content": content}]}  # noqa: E731
    img_part = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    S, C = "/v1/select", "/v1/chat/completions"
    return [
        ("missing question", S, {"image": png}, 400, "question", "missing or empty"),
        ("empty question", S, {"question": "   "}, 400, "question", "missing or empty"),
        ("image not base64", S, {"question": "Q", "image": "@@@ not base64 @@@"}, 400, "image", "not valid base64"),
        ("bytes not an image", S, {"question": "Q", "image": base64.b64encode(b"plain text").decode()}, 400, "image", "not a readable image"),
        ("image over the size limit", S, {"question": "Q", "image": big}, 413, "image", "over the limit"),
        ("image in a refused format (EPS)", S, {"question": "Q", "image": base64.b64encode(EPS).decode()}, 400, "image", "image format EPS is not accepted"),
        ("chat: image in a refused format (ICO)", C, user([{"type": "text", "text": "Q"}, img_part(f"data:image/x-icon;base64,{ico}")]), 400, "image_url.url", "image format ICO is not accepted"),
        ("image too elongated", S, {"question": "Q", "image": _png_b64(Image.new("RGB", (2, 600)))}, 400, "image", "aspect ratio"),
        ("n zero", S, {"question": "Q", "n": 0}, 400, "n", "between 1 and 4"),
        ("n too large", S, {"question": "Q", "n": 5}, 400, "n", "between 1 and 4"),
        ("n not an integer", S, {"question": "Q", "n": "three"}, 400, "n", "integer"),
        ("unknown strategy", S, {"question": "Q", "strategy": "best"}, 400, "strategy", "unknown strategy 'best'"),
        ("unknown field", S, {"question": "Q", "bogus": 1}, 400, "bogus", "unknown field"),
        ("top_p out of range", S, {"question": "Q", "sampling": {"top_p": 1.5}}, 400, "sampling.top_p", "(0, 1]"),
        ("max_new_tokens over limit", S, {"question": "Q", "sampling": {"max_new_tokens": 10**6}}, 400, "sampling.max_new_tokens", "between 1 and"),
        ("greedy with n > 1", S, {"question": "Q", "n": 3, "sampling": {"temperature": 0}}, 400, "sampling.temperature", "identical"),
        ("malformed JSON", S, b'{"question": "Q",', 400, None, "malformed JSON"),
        ("JSON not an object", S, b"[1, 2]", 400, None, "must be an object"),
        ("empty body", S, b"", 400, None, "empty request body"),
        ("chat: unknown model", C, {**user("Q"), "model": "other"}, 404, "model", "not served here"),
        ("chat: no user message", C, {"model": "servetest-round-1", "messages": [{"role": "system", "content": "x"}]}, 400, "messages", "no message with role 'user'"),
        ("chat: remote image URL", C, user([{"type": "text", "text": "Q"}, img_part("https://example.com/a.png")]), 400, "image_url.url", "not fetched"),
        ("chat: two images", C, user([img_part(f"data:image/png;base64,{png}")] * 2), 400, "messages[0].content[1]", "more than one image"),
        ("chat: empty question", C, user([img_part(f"data:image/png;base64,{png}")]), 400, "messages", "missing or empty"),
        ("chat: not an image URI", C, user([{"type": "text", "text": "Q"}, img_part("data:text/plain;base64,aGk=")]), 400, "image_url.url", "not an image"),
        ("chat: unknown strategy", C, {**user("Q"), "strategy": "vote"}, 400, "strategy", "unknown strategy"),
        ("chat: stream", C, {**user("Q"), "stream": True}, 400, "stream", "not supported"),
        ("chat: stop", C, {**user("Q"), "stop": ["Answer"]}, 400, "stop", "stop sequences are not applied"),
        ("chat: logprobs", C, {**user("Q"), "logprobs": True}, 400, "logprobs", "not supported"),
        ("chat: response_format", C, {**user("Q"), "response_format": {"type": "json_object"}}, 400, "response_format", "not supported"),
        ("chat: functions", C, {**user("Q"), "functions": [{"name": "f"}]}, 400, "functions", "tools are not supported"),
        ("chat: tool_choice", C, {**user("Q"), "tool_choice": "auto"}, 400, "tool_choice", "tools are not supported"),
        ("chat: a field neither OpenAI's nor ours", C, {**user("Q"), "best_of": 3}, 400, "best_of", "unknown field"),
        ("chat: max_tokens over limit", C, {**user("Q"), "max_tokens": 10**6}, 400, "max_tokens", "between 1 and"),
        # sizes, each refused before anything is tokenized
        ("choice over its length limit", S, {"question": "Q", "choices": ["a", "b" * (MAX_CHOICE + 1)]}, 400, "choices[1]", f"over the limit of {MAX_CHOICE}"),
        ("chat: choice over its length limit", C, {**user("Q"), "answer_choices": ["x" * (MAX_CHOICE + 1)]}, 400, "answer_choices[0]", "over the limit"),
        ("question and choices over the prompt limit", S, {"question": "q" * 1500, "choices": ["c" * 190] * 3}, 400, "choices", "over the limit of 2000"),
        ("question over the prompt limit", S, {"question": "q" * 2001}, 400, "question", "over the limit of 2000"),
        ("chat: too many messages", C, {"model": "servetest-round-1", "messages": [{"role": "user", "content": "Q"}] * 300}, 400, "messages", "at most 256"),
        # JSON that parses into trouble
        ("nesting past the recursion limit", S, b'{"question": "Q", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None, "nested deeper than 32"),
        ("nesting past the depth limit", S, b'{"question": "Q", "sampling": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, 400, "sampling", "nested deeper than 32"),
        ("lone surrogate in the question", S, b'{"question": "How many \\ud800 objects?"}', 400, "question", "not valid Unicode"),
        ("chat: lone surrogate in a text part", C, json.dumps(user([{"type": "text", "text": "Q"}])).replace('"Q"', '"Q \\udfff"').encode(), 400, "messages[0].content[0].text", "not valid Unicode"),
        ("NaN", S, b'{"question": "Q", "sampling": {"temperature": NaN}}', 400, None, "NaN is not a JSON number"),
        ("an integer of 5000 digits", S, b'{"question": "Q", "n": ' + b"9" * 5000 + b"}", 400, None, "malformed JSON"),
        # typed bodies: each field's own error
        ("chat: unknown role", C, {"model": "servetest-round-1", "messages": [{"role": "robot", "content": "Q"}]}, 400, "messages[0].role", "Input should be"),
        ("chat: content neither text nor parts", C, user(5), 400, "messages[0].content", "valid string"),
        ("chat: unknown content part", C, user([{"type": "audio", "audio": "x"}]), 400, "messages[0].content[0]", "'audio'"),
        ("chat: image part without url", C, user([{"type": "image_url", "image_url": {}}]), 400, "messages[0].content[0].image_url.url", "Field required"),
        ("choices not strings", S, {"question": "Q", "choices": ["a", 3]}, 400, "choices[1]", "valid string"),
    ]


@pytest.mark.parametrize("name,path,body,status,param,needle", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_request_gets_4xx_naming_the_problem(served, name, path, body, status, param, needle):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(f"{served['url']}{path}", data=data, headers={"content-type": "application/json", **AUTH}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert param in err["param"] and err["message"].startswith(err["param"])


def test_one_bad_request_among_concurrent_ones_fails_alone(served, image):
    """Eight requests at once (the sampler batches them); the one with a lone surrogate in its question gets a
    400 naming the field, the seven others their answers."""
    good = {"question": QUESTION, "image": _png_b64(image), "n": 1, "strategy": "first", "sampling": {"seed": 3}}
    bad = json.dumps(good).replace(json.dumps(QUESTION), '"How many \\ud800 red objects?"').encode()
    bodies = [json.dumps(good).encode()] * 8
    bodies[3] = bad
    post = lambda data: requests.post(f"{served['url']}/v1/select", data=data, timeout=120,  # noqa: E731
                                      headers={"content-type": "application/json", **AUTH})
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(post, bodies))
    assert [r.status_code for r in got] == [200] * 3 + [400] + [200] * 4, [r.text[:200] for r in got]
    assert got[3].json()["error"]["param"] == "question"
    assert len({json.dumps(r.json()["candidates"]) for i, r in enumerate(got) if i != 3}) == 1  # same seed, same answer


def _replica_pids() -> dict[str, int]:
    """The processes of this module's ingress and sampler replica, by deployment (Ray titles them by it)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        for name in ("R3VIngress", "R3VSampler"):
            if f"ServeReplica:r3v-test:{name}" in line:
                found[name] = proc.pid
    return found


# What a decode may hold in the ingress: max_concurrent_decodes (2) images at full size (3 bytes a pixel at the
# 4096 x 4096 limit: 48 MiB each) and their copies, with room for the allocator; the sampler gets reduced images.
INGRESS_GROWTH_MIB, SAMPLER_GROWTH_MIB = 400, 200


def test_maximal_images_from_16_clients_keep_memory_bounded_and_healthz_quick(served):
    """16 clients x 2 requests, each with a 4096 x 4096 PNG (the pixel limit): the ingress decodes at most two at
    a time, off its event loop, and reduces each to the model's budget before it reaches the replica; /healthz,
    probed throughout, answers within 1 s; every request gets its answer."""
    import psutil

    body = json.dumps({"question": QUESTION, "image": _png_b64(Image.new("RGB", (4096, 4096), (30, 60, 90))),
                       "n": 1, "strategy": "first", "sampling": {"seed": 1, "max_new_tokens": 4}}).encode()
    assert len(body) < 4 * MAX_IMAGE_BYTES // 3 + 1000
    pids = _replica_pids()
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    base = {name: p.memory_info().rss for name, p in procs.items()}
    peak, probes, done = dict(base), [], []

    def post(_):
        return requests.post(f"{served['url']}/v1/select", data=body, timeout=120,
                             headers={"content-type": "application/json", **AUTH}).status_code

    def watch():
        while not done:
            for name, p in procs.items():
                peak[name] = max(peak[name], p.memory_info().rss)
            t0 = time.perf_counter()
            ok = requests.get(f"{served['url']}/healthz", timeout=30).status_code
            probes.append((ok, time.perf_counter() - t0))
            time.sleep(0.1)

    with ThreadPoolExecutor(17) as pool:
        watcher = pool.submit(watch)
        try:
            statuses = list(pool.map(post, range(32)))
        finally:
            done.append(True)
        watcher.result()
    growth = {name: (peak[name] - base[name]) / 2**20 for name in procs}
    print(f"\nRSS growth MiB {growth}; /healthz probes {len(probes)}, slowest {max(t for _, t in probes):.3f} s")
    assert statuses == [200] * 32
    assert len(probes) >= 5 and all(ok == 200 for ok, _ in probes)
    assert max(t for _, t in probes) < 1.0, probes
    assert growth["R3VIngress"] < INGRESS_GROWTH_MIB and growth["R3VSampler"] < SAMPLER_GROWTH_MIB, growth


def _raw_post(url: str, head: str, chunks, pause_s: float = 0.0, stop_after_s: float = 120.0) -> tuple[int | None, int]:
    """Send `head` then each chunk of `chunks` (`pause_s` apart) until the server answers; returns (HTTP status or
    None when it never answered, body bytes sent before the answer). A terminating empty chunk follows when all
    chunks went out."""
    import select
    from urllib.parse import urlparse

    u = urlparse(url)
    sent, deadline = 0, time.monotonic() + stop_after_s
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(pause_s)
        else:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(30)
        answer = sock.recv(65536).decode("latin-1")
    status = int(answer.split()[1]) if answer.startswith("HTTP/") else None
    return status, sent


def test_body_limit_is_enforced_while_reading(served):
    from r3v_ray.serving.parsing import max_body_bytes

    limit = max_body_bytes(ServeConfig(max_image_bytes=MAX_IMAGE_BYTES, max_prompt_chars=MAX_PROMPT))
    auth = f"Authorization: {AUTH['Authorization']}\r\n"
    # Chunked, no length declared, sent slowly (16 KiB every 5 ms): refused once the limit is passed, long before
    # the 300x-limit body is all sent (reading the whole body first, as before, answered only after all of it).
    piece = b"x" * 16 * 1024
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = f"POST /v1/select HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    total = 300 * limit
    status, sent = _raw_post(served["url"], head, (chunk for _ in range(total // len(piece))), pause_s=0.005)
    assert status == 413 and sent < total / 2, (status, sent, total)
    # A declared length over the limit is refused before any of the body is read.
    head = f"POST /v1/select HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {10 * limit}\r\n\r\n"
    status, sent = _raw_post(served["url"], head, iter(()))
    assert (status, sent) == (413, 0)


def _slow_uploaders(url: str, sources: list[str], seconds: float, during=None) -> tuple[list, object]:
    """One connection from each of `sources` (loopback addresses) that declares a body within the limit and
    sends 64 bytes of it every 0.2 s for at most `seconds`; `during()` runs once all are connected. Returns each
    connection's HTTP status (None: closed without one; "open": no answer by the end) and what `during` gave."""
    import select
    from urllib.parse import urlparse

    u = urlparse(url)
    head = (f"POST /v1/select HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    socks = [socket.create_connection((u.hostname, u.port), timeout=10, source_address=(src, 0)) for src in sources]
    status: dict[int, object] = {}
    try:
        for sock in socks:
            sock.sendall(head + b'{"question": "')
        result = during() if during else None
        deadline = time.monotonic() + seconds
        while len(status) < len(socks) and time.monotonic() < deadline:
            open_ = [s for i, s in enumerate(socks) if i not in status]
            for sock in select.select(open_, [], [], 0.2)[0]:
                data = sock.recv(65536).decode("latin-1")
                status[socks.index(sock)] = int(data.split()[1]) if data.startswith("HTTP/") else None
            for i, sock in enumerate(socks):
                if i not in status:
                    try:
                        sock.send(b"x" * 64)
                    except OSError:
                        status[i] = None
    finally:
        for sock in socks:
            sock.close()
    return [status.get(i, "open") for i in range(len(socks))], result


def test_slow_uploaders_do_not_stall_healthz_or_answers(served, image):
    """130 connections trickling bodies (the issue's count, more than the ingress's slots were; from 13 loopback
    addresses, 10 each: within both caps) are received until the body deadline and then answered 408; meanwhile
    /healthz and a valid request from another address answer within a second."""
    body = {"question": QUESTION, "image": _png_b64(image), "n": 1, "strategy": "first",
            "sampling": {"seed": 2, "max_new_tokens": 4}}
    _select(served["url"], **body)  # warm: the timing below is the request's, not a first call's

    def probe():
        times = {}
        for name, call in (("healthz", lambda: requests.get(f"{served['url']}/healthz", timeout=30)),
                           ("select", lambda: _select(served["url"], **body))):
            t0 = time.perf_counter()
            assert call().status_code == 200
            times[name] = time.perf_counter() - t0
        return times

    sources = [f"127.0.0.{2 + i // 10}" for i in range(130)]
    t0 = time.monotonic()
    statuses, times = _slow_uploaders(served["url"], sources, BODY_TIMEOUT_S + 20, probe)
    print(f"\nslow uploaders: {sorted(collections.Counter(map(str, statuses)).items())} in "
          f"{time.monotonic() - t0:.1f} s; /healthz {times['healthz']:.3f} s, a request {times['select']:.3f} s")
    assert times["healthz"] < 1.0 and times["select"] < 1.0, times
    assert statuses == [408] * 130, statuses


def test_one_client_address_gets_at_most_its_share_of_body_slots(served):
    statuses, _ = _slow_uploaders(served["url"], ["127.0.0.99"] * 20, BODY_TIMEOUT_S + 20)
    assert statuses.count(429) == 20 - 16 and statuses.count(408) == 16, statuses


def test_body_slots_refuse_over_the_caps_and_free_on_exit():
    from r3v_ray.serving.parsing import BodySlots

    slots = BodySlots(total=3, per_client=2)
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(RequestError, match="2 request bodies from a") as caught:
            with slots.hold("a"):
                pass
        assert caught.value.status == 429
        with slots.hold("b"):
            with pytest.raises(RequestError) as caught:
                with slots.hold("c"):
                    pass
            assert caught.value.status == 503
    assert slots.active == {}


def test_read_body_stops_at_the_limit():
    import asyncio

    from r3v_ray.serving.parsing import max_body_bytes, read_body

    cfg = ServeConfig(max_image_bytes=1000, max_prompt_chars=100)
    limit, consumed = max_body_bytes(cfg), []

    async def endless():
        while True:
            consumed.append(4096)
            yield b"x" * 4096

    with pytest.raises(RequestError) as caught:
        asyncio.run(read_body(endless(), None, cfg))
    assert caught.value.status == 413 and sum(consumed) <= limit + 4096  # not one chunk more than needed
    with pytest.raises(RequestError, match="malformed Content-Length"):
        asyncio.run(read_body(endless(), "12abc", cfg))

    async def one(data):
        yield data

    assert asyncio.run(read_body(one(b"{}"), "2", cfg)) == b"{}"


def test_api_keys_guard_every_route_but_healthz(served):
    """No key or a wrong one: 401 in the OpenAI error shape on every route (the docs and unknown paths too),
    except /healthz; either key (the config's, the file's) opens them; the openai client raises its usual error."""
    import openai

    url = served["url"]
    schema = requests.get(f"{url}/openapi.json", headers=AUTH, timeout=30).json()
    routes = [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]
    assert {p for _, p in routes} == {"/v1/select", "/v1/chat/completions", "/v1/models", "/healthz"}
    routes += [("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/no/such/route"), ("DELETE", "/v1/models")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            r = requests.request(method, f"{url}{path}", headers=headers, timeout=30)
            if path == "/healthz":
                assert r.status_code == 200, r.text
                continue
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["WWW-Authenticate"] == "Bearer"
    for key in (KEY, FILE_KEY):
        ok = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == served["model"]
    missing = requests.get(f"{url}/no/such/route", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert schema["paths"]["/v1/models"]["get"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client.models.list()


def test_key_check_compares_every_digest():
    from r3v_ray.config import ConfigError
    from r3v_ray.serving.auth import KEYS_FILE_ENV, KeyCheck, digest, load_keys

    check = KeyCheck([digest("a"), digest("b")])
    assert check.allows("Bearer b") and check.allows("bearer  a ") and not check.allows("Bearer c")
    assert not check.allows(None) and not check.allows("Bearer ") and not check.allows("b")
    assert KeyCheck([]).allows(None)  # no keys: open
    with pytest.raises(ConfigError, match=KEYS_FILE_ENV):
        load_keys(ServeConfig(), {KEYS_FILE_ENV: "/no/such/keys-file"})


@pytest.mark.parametrize("name,keys,file_bytes,env,needle", [
    ("variable set but empty", [], None, "", "set but empty"),
    ("variable set to blanks", [], None, "  ", "set but empty"),
    ("empty key in the config", [""], None, None, "serve.api_keys[0]: an empty or blank key"),
    ("blank key in the config", ["sk-a", "  "], None, None, "serve.api_keys[1]: an empty or blank key"),
    ("keys file not UTF-8", [], b"sk-caf\xe9\n", "FILE", "not UTF-8 text (byte 6)"),
    ("keys file of comments only", [], b"# none yet\n\n", "FILE", "holds no key"),
    ("keys file missing", [], None, "/no/such/keys-file", "cannot read the API keys file"),
])
def test_keys_never_fail_open(tmp_path, tiny_model_dir, capsys, name, keys, file_bytes, env, needle):
    """Each way of meaning to set keys and getting none refuses `r3v serve` with one line naming the source,
    before Ray starts."""
    import ray

    from r3v_ray.cli import main
    from r3v_ray.serving.auth import KEYS_FILE_ENV

    if env == "FILE":
        env = str(tmp_path / "keys.txt")
        (tmp_path / "keys.txt").write_bytes(file_bytes)
    argv = ["serve", "--checkpoint", tiny_model_dir, "--set", f"serve.api_keys={json.dumps(keys)}"]
    ray_before = ray.is_initialized()  # the module's app may be up; this start must not have started a Ray
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with pytest.MonkeyPatch.context() as mp:
        if env is not None:
            mp.setenv(KEYS_FILE_ENV, env)
        try:
            assert main(argv) == 2
        finally:  # main's log handler writes to this test's captured stderr, closed after it
            root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert (KEYS_FILE_ENV in err) == (not keys)  # names its source: the variable, or the config field
    assert ray.is_initialized() == ray_before


def test_docs_page_is_off_unless_asked_for_and_the_schema_is_always_served():
    """/docs pulls Swagger UI from a CDN (blank without internet), so it is opt-in; /openapi.json is always there."""
    from fastapi.testclient import TestClient

    from r3v_ray.serving.auth import KeyCheck
    from r3v_ray.serving.routes import create_app

    class NotCalled:  # the routes below never reach the ingress
        model: dict = {}

    assert ServeConfig().docs is False
    on = TestClient(create_app(NotCalled(), docs=True, check=KeyCheck([])))
    off = TestClient(create_app(NotCalled(), docs=False, check=KeyCheck([])))
    assert on.get("/docs").status_code == 200 and "swagger-ui" in on.get("/docs").text
    assert off.get("/docs").status_code == 404
    for client in (on, off):
        assert "/v1/select" in client.get("/openapi.json").json()["paths"]


def test_r3v_serve_starts_ray_on_loopback(served):
    """`r3v serve` without --address or RAY_ADDRESS started a fresh local Ray: its node and the sampler replica
    are on 127.0.0.1, not on the machine's network address."""
    import ray
    from ray import serve

    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    info = serve.get_deployment_handle("R3VSampler", "r3v-test").info.remote().result()
    assert info["node_ip"] == "127.0.0.1"


# -- a bounded fuzz test: no body makes the server answer 5xx ------------------------------------------------------
FUZZ_EXAMPLES = 30  # per generator below; a valid request may run the model (at most 32 tokens, N <= 4)


def test_fuzzed_requests_never_get_a_server_error(served):
    """schemathesis draws requests from the running app's own OpenAPI schema, valid ones and deliberately invalid
    ones, for every operation; hypothesis adds arbitrary JSON and arbitrary bytes for both POST routes. Every answer
    is below 500, and every error is in the OpenAI error shape."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url = served["url"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
    session = requests.Session()
    session.headers.update(AUTH)
    seen: dict[int, int] = {}

    def check(status: int, text: str, what) -> None:
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (what, status, text[:300])
        if status >= 400:
            assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}, text[:300]

    bounded = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/v1/select"), ("POST", "/v1/chat/completions")}
    flip = itertools.count()
    for op in operations:
        # GET routes take no input: nothing to make invalid
        modes = list(schemathesis.GenerationMode) if op.method.upper() == "POST" else [schemathesis.GenerationMode.POSITIVE]
        for mode in modes:
            @bounded
            @given(op.as_strategy(generation_mode=mode))
            def drawn(case):
                chat = op.path == "/v1/chat/completions"
                if chat and isinstance(case.body, dict) and next(flip) % 2:
                    case.body["model"] = served["model"]  # half of them get past the model check
                r = case.call(base_url=url, session=session, timeout=120)
                check(r.status_code, r.text, (op.method, op.path, case.body))

            drawn()

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
        max_leaves=30,
    )
    keys = st.sampled_from(["question", "image", "choices", "n", "strategy", "sampling", "model", "messages",
                            "answer_choices", "max_tokens", "seed", "temperature"])
    paths = st.sampled_from(["/v1/select", "/v1/chat/completions"])

    def post(path: str, data: bytes) -> None:
        r = session.post(f"{url}{path}", data=data, headers={"content-type": "application/json"}, timeout=120)
        check(r.status_code, r.text, (path, data[:300]))

    @bounded
    @given(paths, st.dictionaries(keys, json_values, max_size=6) | json_values)
    def any_json(path, body):
        post(path, json.dumps(body).encode())

    @bounded
    @given(paths, st.binary(max_size=200))
    def any_bytes(path, data):
        post(path, data)

    any_json()
    any_bytes()
    assert any(code < 300 for code in seen) and sum(seen.values()) >= 2 * FUZZ_EXAMPLES, seen
    print(json.dumps({"fuzz_status_counts": seen}))


# -- fault tolerance (last: it replaces the sampler replica) ---------------------------------------------------
def _sampler_replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#R3VSampler#" in a["name"]}


def test_killed_sampler_replica_is_replaced_and_requests_succeed(served, image):
    import ray

    body = {"question": QUESTION, "image": _png_b64(image), "n": 2, "strategy": "majority", "sampling": {"seed": 1}}
    before = _select(served["url"], **body).json()
    (old,) = _sampler_replicas()
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    statuses, deadline = [], time.monotonic() + 150
    while time.monotonic() < deadline:
        r = _select(served["url"], **body)
        statuses.append(r.status_code)
        if r.status_code == 200 and _sampler_replicas() - {old}:
            break
        time.sleep(1)
    assert statuses[-1] == 200, statuses
    assert 500 not in statuses  # while no replica is up the answer is 503 "retry", never an internal error
    assert set(statuses) <= {200, 503}
    assert old not in _sampler_replicas() and len(_sampler_replicas()) == 1
    for _ in range(2):  # later requests succeed, and the new replica computes the same seeded answer
        after = _select(served["url"], **body)
        assert after.status_code == 200 and after.json()["candidates"] == before["candidates"]
