"""Distributed sampling on a real local Ray with the tiny model: counts, seeds, greedy, a killed sampler, skips."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from r3v_ray.run import store
from r3v_ray.config import RunConfig
from r3v_ray.engines import RequestOutput, SamplingParams
from r3v_ray.method.prompts import select_prompt
from r3v_ray.pipeline.sampling import (
    SAMPLE_SCHEMA,
    SamplingStats,
    check_rows,
    finalize,
    label_outputs,
    params_from_config,
    records_to_rows,
    sample,
)
from r3v_ray.tasks import RecordError, get_task

TASK = get_task("synthetic")


def _cfg(**sampling) -> RunConfig:
    cfg = RunConfig()
    cfg.sampling.max_new_tokens = 8
    cfg.sampling.batch_size = 4
    for key, value in sampling.items():
        setattr(cfg.sampling, key, value)
    return cfg


@pytest.fixture(scope="module")
def rows(synthetic_data_dir):
    return records_to_rows(list(TASK.read(synthetic_data_dir, "train"))[:10], TASK)


@pytest.fixture(scope="module")
def odd_rows(rows, tmp_path_factory):
    """Rows that must be skipped (corrupt image, over-long prompt) and rows in other legal shapes."""
    bad = tmp_path_factory.mktemp("bad") / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return [
        {**rows[0], "question_id": "corrupt-image", "image": str(bad)},
        {**rows[1], "question_id": "too-long", "prompt": "How many objects? " * 200},
        {**rows[2], "question_id": "image-bytes", "image": Path(rows[2]["image"]).read_bytes()},
        {**rows[3], "question_id": "no-image", "image": None},
    ]


@pytest.fixture(scope="module")
def first_run(ray_local, tiny_model_dir, rows, odd_rows, tmp_path_factory):
    """One sampled run shared by several tests: 10 questions + 4 odd rows, n=2."""
    out = tmp_path_factory.mktemp("run1") / "samples.parquet"
    cfg = _cfg(max_prompt_tokens=256)
    params = params_from_config(cfg.sampling, seed=7, n=2)
    handler = _Capture()
    logging.getLogger("r3v_ray.pipeline.sampling").addHandler(handler)
    try:
        stats = sample(cfg, tiny_model_dir, rows + odd_rows, str(out), params, round_index=1)
    finally:
        logging.getLogger("r3v_ray.pipeline.sampling").removeHandler(handler)
    return stats, out, handler.messages, ray_local.available_resources()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# -- pure parts ---------------------------------------------------------------------------------------------


def test_rows_and_params_from_config(rows):
    assert set(rows[0]) == {"question_id", "prompt", "image", "answer", "record"}
    assert json.loads(rows[0]["record"])["id"] == rows[0]["question_id"]
    assert rows[0]["prompt"].endswith(TASK.cot_instruction) and os.path.isabs(rows[0]["image"])
    cfg = RunConfig()
    p = params_from_config(cfg.sampling, seed=3)
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.seed) == (3, 0.9, 0.95, 50, 384, 3)
    assert params_from_config(cfg.sampling, seed=3, n=5).n == 5
    greedy = params_from_config(cfg.sampling, seed=3, greedy=True)
    assert greedy.greedy and greedy.n == 1


def test_labeling_uses_the_task_extractor_and_never_credits_without_gold():
    rows = [{"question_id": "q1", "answer": "4"}, {"question_id": "q2", "answer": None}, {"question_id": "q3", "answer": "1"}]
    outputs = [
        RequestOutput(texts=["2 + 2 = 4.\nAnswer: 4", "no answer here"], n_tokens=[9, 3]),
        RequestOutput(texts=["Answer: 4"], n_tokens=[3]),
        RequestOutput(error="prompt has 999 tokens > max_prompt_tokens 256"),
    ]
    recs = label_outputs(rows, outputs, TASK, round_index=2)
    assert [(r["question_id"], r["sample_index"], r["extracted_answer"], r["correct"]) for r in recs] == [
        ("q1", 0, "4", True),
        ("q1", 1, None, False),
        ("q2", 0, "4", False),
        ("q3", -1, None, False),
    ]
    assert recs[-1]["skip_reason"].startswith("prompt has 999 tokens") and all(r["round"] == 2 for r in recs)


def test_finalize_dedupes_sorts_and_prefers_samples_over_skips():
    def rec(qid, i, text="t", skip=None):
        return dict(question_id=qid, round=1, sample_index=i, rationale=text, extracted_answer=None,
                    correct=False, n_tokens=1, skip_reason=skip)

    table, skipped = finalize(
        [rec("b", 1), rec("b", 0), rec("a", 0), rec("b", 0, "dup"), rec("c", -1, skip="bad image"),
         rec("a", -1, skip="stale"), rec("c", -1, skip="bad image")]
    )
    assert table.schema == SAMPLE_SCHEMA
    assert list(zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist())) == [("a", 0), ("b", 0), ("b", 1)]
    assert table["rationale"].to_pylist()[1] == "t"
    assert skipped == [{"question_id": "c", "reason": "bad image"}]


def test_rows_without_a_key_or_with_a_repeated_id_are_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match=r"row 1 .*'prompt'"):
        check_rows([{"question_id": "a", "prompt": "x"}, {"question_id": "b"}])
    out = tmp_path / "samples.parquet"
    with pytest.raises(ValueError, match="'a' appears twice"):
        sample(_cfg(), tiny_model_dir, [{"question_id": "a", "prompt": "x"}] * 2, str(out), SamplingParams(), 1)
    assert list(tmp_path.iterdir()) == []


# -- the Ray pipeline ---------------------------------------------------------------------------------------


def test_every_question_gets_exactly_n_samples_once(first_run, rows):
    stats, out, _, _ = first_run
    table = store.read_parquet(str(out))
    assert table.schema == SAMPLE_SCHEMA
    keys = list(zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist()))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    expected = {r["question_id"] for r in rows} | {"image-bytes", "no-image"}
    assert set(table["question_id"].to_pylist()) == expected
    assert sorted(keys) == sorted((q, i) for q in expected for i in range(2))
    assert set(table["round"].to_pylist()) == {1} and all(n >= 1 for n in table["n_tokens"].to_pylist())
    assert (stats.num_rows, stats.num_samples, stats.num_skipped, stats.passes) == (14, 24, 2, 1)
    assert stats.num_correct == sum(table["correct"].to_pylist())
    # labels come from the task's own extractor and checker
    gold = {r["question_id"]: r["answer"] for r in rows}
    for rec in table.to_pylist():
        if rec["question_id"] in gold:
            assert (rec["extracted_answer"], rec["correct"]) == TASK.score(rec["rationale"], gold[rec["question_id"]])


def test_bad_rows_are_skipped_logged_and_counted(first_run):
    stats, _, messages, _ = first_run
    reasons = {s["question_id"]: s["reason"] for s in stats.skipped}
    assert set(reasons) == {"corrupt-image", "too-long"}
    assert "unreadable image" in reasons["corrupt-image"] and "max_prompt_tokens 256" in reasons["too-long"]
    assert any("corrupt-image" in m and "unreadable image" in m for m in messages)
    assert any("too-long" in m for m in messages)
    assert stats.to_dict()["num_skipped"] == 2


def test_output_is_written_atomically_and_samplers_are_released(first_run):
    _, out, _, resources_after = first_run
    assert [p.name for p in out.parent.iterdir()] == ["samples.parquet"]  # no temporary file left behind
    assert resources_after.get("CPU") == 2.0  # the sampler actors gave their CPUs back


def test_same_seed_gives_the_same_samples_whatever_the_batching(first_run, tiny_model_dir, rows, tmp_path):
    _, out, _, _ = first_run
    cfg = _cfg(max_prompt_tokens=256, batch_size=3)
    cfg.resources.num_samplers = 1
    again = tmp_path / "again.parquet"
    sample(cfg, tiny_model_dir, rows[::-1], str(again), params_from_config(cfg.sampling, seed=7, n=2), 1)
    first = store.read_parquet(str(out)).to_pylist()
    assert store.read_parquet(str(again)).to_pylist() == [r for r in first if r["question_id"].startswith("syn-")]


def test_evaluation_passes_greedy_and_self_select_in_the_same_actors_match_a_local_engine(
    ray_local, tiny_model_dir, rows, tmp_path
):
    from r3v_ray.engines import GenerationRequest, create_engine
    from r3v_ray.tasks import load_image

    eval_rows = [{**r, "select_question": f"Question {r['question_id']}?"} for r in rows[:6]]
    cfg = _cfg()
    params = params_from_config(cfg.sampling, seed=5, n=2)
    uris = {k: str(tmp_path / f"{k}.parquet") for k in ("samples", "greedy", "select")}
    stats = sample(cfg, tiny_model_dir, eval_rows, uris["samples"], params, round_index=0,
                   greedy_uri=uris["greedy"], select_uris={2: uris["select"]})
    assert stats.num_samples == 12
    got = {k: store.read_parquet(u).to_pylist() for k, u in uris.items()}
    assert [len(got[k]) for k in ("samples", "greedy", "select")] == [12, 6, 6]

    engine = create_engine("hf", tiny_model_dir, torch_threads=1)
    greedy = params_from_config(cfg.sampling, seed=5, greedy=True)
    requests = [GenerationRequest(r["prompt"], load_image(r["image"]), f"{r['question_id']}/0") for r in eval_rows]
    local_samples = engine.generate(requests, params)
    local_greedy = engine.generate(requests, greedy)
    select_requests = [
        GenerationRequest(select_prompt(r["select_question"], o.texts), q.image, q.key)
        for r, o, q in zip(eval_rows, local_samples, requests)
    ]
    local_select = engine.generate(select_requests, greedy)
    by_q = lambda rows_: {r["question_id"]: r["rationale"] for r in rows_}  # noqa: E731
    assert by_q(got["greedy"]) == {r["question_id"]: o.texts[0] for r, o in zip(eval_rows, local_greedy)}
    assert by_q(got["select"]) == {r["question_id"]: o.texts[0] for r, o in zip(eval_rows, local_select)}
    with pytest.raises(ValueError, match="select_question"):
        sample(cfg, tiny_model_dir, rows[:2], str(tmp_path / "x.parquet"), params, 0,
               select_uris={2: str(tmp_path / "y")})


def test_evaluation_without_the_greedy_pass_scores_the_same_samples(ray_local, tiny_model_dir, synthetic_data_dir,
                                                                    tmp_path):
    """greedy=False (the reproduction's temperature sweep): samples and select as a full evaluation draws them, no
    greedy rationales and no Test@1."""
    from r3v_ray.pipeline.evaluate import evaluate

    records = list(TASK.read(synthetic_data_dir, "test"))[:4]
    cfg = _cfg()
    cfg.evaluation.n, cfg.evaluation.max_new_tokens = 2, 8
    full = evaluate(cfg, tiny_model_dir, records, TASK, str(tmp_path / "full"), 0)
    lean = evaluate(cfg, tiny_model_dir, records, TASK, str(tmp_path / "lean"), 0, greedy=False)
    assert "test@1" in full and "test@1" not in lean
    assert {k: lean[k] for k in ("oracle@2", "majority@2", "select@2")} == \
        {k: full[k] for k in ("oracle@2", "majority@2", "select@2")}
    for name in ("samples", "select"):
        assert (store.read_parquet(str(tmp_path / "lean" / f"{name}.parquet")).to_pylist()
                == store.read_parquet(str(tmp_path / "full" / f"{name}.parquet")).to_pylist())
    assert (tmp_path / "full" / "greedy.parquet").exists() and not (tmp_path / "lean" / "greedy.parquet").exists()
    with pytest.raises(ValueError, match="ask for nothing"):
        evaluate(cfg, tiny_model_dir, records, TASK, str(tmp_path / "none"), 0, greedy_only=True, greedy=False)


def test_a_scaling_evaluation_scores_every_n_from_one_sampling_pass_as_separate_evaluations_would(
    ray_local, tiny_model_dir, synthetic_data_dir, tmp_path
):
    """evaluation.scaling_ns: Select@2 and Select@3 from one draw of 3 candidates (one evaluate, one samples
    file) are the numbers and rationales of an evaluation at N=2 and one at N=3."""
    from r3v_ray.pipeline.evaluate import evaluate

    records = list(TASK.read(synthetic_data_dir, "test"))[:4]

    def cfg(**evaluation):
        return RunConfig.model_validate({
            "sampling": {"max_new_tokens": 8, "batch_size": 4}, "resources": {"num_samplers": 1},
            "evaluation": {"max_new_tokens": 8, **evaluation}})

    scaled = evaluate(cfg(n=2, scaling_ns=[2, 3]), tiny_model_dir, records, TASK, str(tmp_path / "scaled"), 0,
                      greedy=False)
    assert sorted(p.name for p in (tmp_path / "scaled").iterdir()) == [
        "samples.parquet", "select-n3.parquet", "select.parquet"]
    assert len(store.read_parquet(str(tmp_path / "scaled" / "samples.parquet"))) == 4 * 3
    curve = scaled["scaling"]
    assert curve["candidates"] == 3 and list(curve["select"]) == [2, 3] and list(curve["oracle"]) == [1, 2, 3]
    assert scaled["select@2"] == curve["select"][2] and scaled["majority@2"] == curve["majority"][2]
    for n, select_file in ((2, "select.parquet"), (3, "select-n3.parquet")):
        alone = evaluate(cfg(n=n), tiny_model_dir, records, TASK, str(tmp_path / f"n{n}"), 0, greedy=False)
        assert "scaling" not in alone
        assert (curve["select"][n], curve["majority"][n], curve["oracle"][n]) == (
            alone[f"select@{n}"], alone[f"majority@{n}"], alone[f"oracle@{n}"])
        assert (store.read_parquet(str(tmp_path / "scaled" / select_file)).to_pylist()
                == store.read_parquet(str(tmp_path / f"n{n}" / "select.parquet")).to_pylist())
    with pytest.raises(ValueError, match=r"self-select over \[4\] candidates, but 3 are drawn"):
        rows_ = [{**r, "select_question": "Q?"} for r in records_to_rows(records, TASK)]
        sample(cfg(), tiny_model_dir, rows_, str(tmp_path / "x.parquet"),
               params_from_config(cfg().evaluation, seed=1, n=3), 0, select_uris={4: str(tmp_path / "y")})


def _alive_sampler_handle(ray, deadline_s: float = 120.0):
    """A handle to a live sampler actor of the running dataset.

    ray.util.state needs the dashboard, which the shared `ray_local` leaves off; the GCS actor table has the
    same facts.
    """
    from ray._private.state import actors

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        alive = [aid for aid, info in actors().items() if "EngineActor" in info["ActorClassName"] and info["State"] == "ALIVE"]
        if alive:
            worker = ray._private.worker.global_worker
            return alive[0], worker.core_worker.get_actor_handle(ray.ActorID.from_hex(alive[0]))
        time.sleep(0.05)
    raise AssertionError("no sampler actor became alive")


KILL_CFG = _cfg(batch_size=2, max_new_tokens=24)
KILL_PARAMS = params_from_config(KILL_CFG.sampling, seed=1, n=2)


@pytest.fixture(scope="module")
def kill_rows_and_expected(synthetic_data_dir, tiny_model_dir):
    """20 questions and their rationales from a local engine (samples are seeded per row, wherever they run)."""
    from r3v_ray.engines import GenerationRequest, create_engine
    from r3v_ray.tasks import load_image

    rows = records_to_rows(list(TASK.read(synthetic_data_dir, "train"))[:20], TASK)
    engine = create_engine("hf", tiny_model_dir, torch_threads=1)
    requests = [GenerationRequest(r["prompt"], load_image(r["image"]), f"{r['question_id']}/1") for r in rows]
    outputs = engine.generate(requests, KILL_PARAMS)
    return rows, [(r["question_id"], i, text) for r, o in zip(rows, outputs) for i, text in enumerate(o.texts)]


@pytest.mark.parametrize("no_restart", [False, pytest.param(True, marks=pytest.mark.slow)],  # for good: ~70 s
                         ids=["crash-restarted", "killed-for-good"])
def test_a_killed_sampler_still_yields_complete_duplicate_free_output(ray_local, tiny_model_dir, kill_rows_and_expected, tmp_path, no_restart):
    rows, expected = kill_rows_and_expected
    cfg, params = KILL_CFG, KILL_PARAMS
    out = tmp_path / "samples.parquet"
    result: dict = {}

    def run():
        try:
            result["stats"] = sample(cfg, tiny_model_dir, rows, str(out), params, round_index=1)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        actor_id, handle = _alive_sampler_handle(ray_local)
        assert thread.is_alive(), "sampling finished before the kill: the test would prove nothing"
        ray_local.kill(handle, no_restart=no_restart)
    finally:
        thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    table = store.read_parquet(str(out))
    got = list(zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist(), table["rationale"].to_pylist()))
    assert got == sorted(expected)  # complete, no duplicates, and retried batches gave the same seeded samples
    from ray._private.state import actors

    if no_restart:  # the dataset lost an actor for good: a further pass covers what the failed one left
        assert result["stats"].passes in (1, 2)  # 1 only if Ray Data replaced the dead actor by itself
    else:  # Ray Data restarted the actor and retried its batch
        assert actors()[actor_id]["NumRestarts"] >= 1 and result["stats"].passes == 1


def test_labeling_is_record_aware_for_multiple_choice():
    # An answer given as the option's text is scored by its letter, through the record the row carries.
    from r3v_ray.tasks import Record

    task = get_task("generic")
    record = Record(id="mc", question="Which animal?", answer="B", choices=["cat", "dog"])
    rows = records_to_rows([record], task)
    out = label_outputs(rows, [RequestOutput(texts=["Answer: dog", "Answer: cat"], n_tokens=[3, 3])], task, 1)
    assert [(o["extracted_answer"], o["correct"]) for o in out] == [("B", True), ("A", False)]


def test_a_path_that_arrives_as_bytes_is_read_as_a_path(rows, tmp_path):
    from PIL import Image

    from r3v_ray.tasks import load_image
    from r3v_ray.tasks.base import path_in_bytes

    path = rows[0]["image"]
    assert path_in_bytes(path.encode()) == path and path_in_bytes(b"s3://bucket/a.png") == "s3://bucket/a.png"
    assert load_image(path.encode(), "q").tobytes() == load_image(path, "q").tobytes()
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):  # image content never passes for a path
        buf = tmp_path / f"x.{fmt.lower()}"
        Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, format=fmt)
        assert path_in_bytes(buf.read_bytes()) is None
    with pytest.raises(RecordError, match="q7.*image"):
        load_image(str(tmp_path / "missing.png").encode(), "q7")


def test_a_batch_mixing_image_paths_and_bytes_samples_every_row(first_run, tiny_model_dir, rows, tmp_path):
    # In a batch that also holds image bytes, Ray Data hands every image path over as bytes (the column becomes
    # binary); those rows were skipped as unreadable images before.
    mixed = [{**r, "image": Path(r["image"]).read_bytes()} if i % 2 else r for i, r in enumerate(rows[:8])]
    cfg = _cfg(max_prompt_tokens=256)  # batches of 4: paths and bytes in each
    out = tmp_path / "mixed.parquet"
    stats = sample(cfg, tiny_model_dir, mixed, str(out), params_from_config(cfg.sampling, seed=7, n=2), 1)
    assert stats.skipped == [] and stats.num_samples == 16
    ids = {r["question_id"] for r in mixed}
    first = store.read_parquet(str(first_run[1])).to_pylist()
    assert store.read_parquet(str(out)).to_pylist() == [r for r in first if r["question_id"] in ids]


def test_the_pipeline_writes_exactly_n_rows_per_question_as_finalize_orders_them_and_the_driver_gets_stats_only(
        ray_local, tiny_model_dir, rows, tmp_path):
    """samples.parquet is written by Ray workers (Ray Data's write tasks, then one task publishing the file): the
    rows `finalize` makes of the labeled engine outputs (what the driver used to collect and write itself), exactly
    n per question, recorded for the stage's manifest with the size and sha256 of the file in place."""
    import hashlib

    from r3v_ray.engines import GenerationRequest, create_engine
    from r3v_ray.tasks import load_image

    cfg = _cfg(batch_size=3)
    params = params_from_config(cfg.sampling, seed=5, n=3)
    engine = create_engine("hf", tiny_model_dir, torch_threads=1)
    requests = [GenerationRequest(r["prompt"], load_image(r["image"]), f"{r['question_id']}/2") for r in rows]
    expected, skipped = finalize(label_outputs(rows, engine.generate(requests, params), TASK, 2))
    assert skipped == []

    out = tmp_path / "round" / "samples.parquet"
    with store.recording() as written:
        stats = sample(cfg, tiny_model_dir, rows[::-1], str(out), params, round_index=2)
    table = store.read_parquet(str(out))
    assert table.equals(expected) and table.schema == SAMPLE_SCHEMA
    counts = {q: table["question_id"].to_pylist().count(q) for q in {r["question_id"] for r in rows}}
    assert set(counts.values()) == {3} and table.num_rows == 3 * len(rows)

    data = out.read_bytes()
    assert written == {str(out): {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert [p.name for p in out.parent.iterdir()] == ["samples.parquet"]  # the passes' parts are gone
    # What comes back to the driver: counts and skips, not a rationale.
    assert isinstance(stats, SamplingStats)
    assert (stats.num_samples, stats.num_correct) == (table.num_rows, sum(table["correct"].to_pylist()))
    returned = json.dumps(stats.to_dict())
    assert not any(text in returned for text in table["rationale"].to_pylist() if len(text) > 3)
    # which sampler ran how many batches, when (batches of 3 questions: at least 4 of them)
    assert 1 <= len(stats.samplers) <= cfg.resources.num_samplers and stats.samplers[0]["first_start"] == 0.0
    assert sum(w["batches"] for w in stats.samplers) >= 4
    assert all(0 < w["busy_seconds"] <= w["last_end"] - w["first_start"] + 1e-3 for w in stats.samplers)
