"""Collator, loss, step plan (no Ray), then real Ray Train + DeepSpeed runs on the tiny model (one Ray per module).

Three training runs in all: 2 workers with ZeRO-2 and an injected worker failure (loss falls, every term is
reported, resume, export reloads and generates), LoRA, and alpha = beta = 0 against a plain single-process SFT
loop written out here.
"""

from __future__ import annotations

import json
import os
import time
import threading
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from r3v_ray.config import ConfigError, RunConfig, config_from_dict
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.models import load_model, load_model_and_processor, load_processor
from r3v_ray.method.reflect import build_training_data
from r3v_ray.tasks import RecordError, get_task, load_image
from r3v_ray.training import (
    IGNORE_INDEX,
    TASK_IDS,
    ExampleError,
    ReflectionCollator,
    make_plan,
    model_inputs,
    read_examples,
    train,
    write_examples,
)
from r3v_ray.method.reflect import TERMS
from r3v_ray.training.loss import combine, term_nll_sums, term_token_counts, term_weights
from r3v_ray.training.plan import global_batches, lr_factor, worker_micro_batches
from conftest import tensorboard_scalars

TASK = get_task("synthetic")


def _examples(data_dir: str, n_questions: int) -> list[dict]:
    """A small R3V training set: every question has its teacher rationale as a positive and a wrong one."""
    records = {r.id: r for r in list(TASK.read(data_dir, "train"))[:n_questions]}
    pool = []
    for qid, r in records.items():
        bad = "B" if r.answer == "A" else "A" if r.answer == "B" else str(int(r.answer) + 1)
        pool.append(dict(question_id=qid, round=1, sample_index=0, rationale=r.rationale, extracted_answer=r.answer, correct=True))
        wrong = f"There are many objects.\nAnswer: {bad}"
        pool.append(dict(question_id=qid, round=1, sample_index=1, rationale=wrong, extracted_answer=bad, correct=False))
    examples, _ = build_training_data(pool, records, TASK, RunConfig().reflect, round_index=1)
    return examples


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir)


@pytest.fixture(scope="module")
def train_uri(synthetic_data_dir, tmp_path_factory):
    # 4 questions: 4 sft + 4 refine + 4 select + 8 warm-up = 20 examples
    uri = str(tmp_path_factory.mktemp("train-data") / "train.parquet")
    write_examples(uri, _examples(synthetic_data_dir, 4))
    return uri


# -- examples file, collator, loss, plan -------------------------------------------------------------------------


def test_examples_file_round_trips_and_bad_rows_are_named(train_uri, tmp_path):
    rows = read_examples(train_uri)
    assert Counter(r["task"] for r in rows) == {"warmup": 8, "sft": 4, "refine": 4, "select": 4}
    bad = dict(rows[0], task="chat")
    with pytest.raises(ExampleError, match=rf"example 1 \(question '{rows[0]['question_id']}'\): field 'task'"):
        write_examples(str(tmp_path / "bad.parquet"), [rows[0], bad])
    with pytest.raises(ExampleError, match="field 'target'"):
        write_examples(str(tmp_path / "bad.parquet"), [dict(rows[0], target="")])
    assert not (tmp_path / "bad.parquet").exists()


def test_label_mask_covers_exactly_the_assistant_tokens(processor, train_uri):
    rows = read_examples(train_uri)
    text_only = dict(rows[0], image=None, task="select")
    batch_rows = [rows[0], text_only, rows[-1]]
    collator = ReflectionCollator(processor)
    batch = collator(batch_rows)
    tok = processor.tokenizer
    image_id = processor.image_token_id
    assert batch["task_ids"].tolist() == [TASK_IDS[r["task"]] for r in batch_rows]
    for i, row in enumerate(batch_rows):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        assert (ids[n:] == tok.pad_token_id).all() and (labels[n:] == IGNORE_INDEX).all()
        labelled = (labels != IGNORE_INDEX).nonzero().flatten()
        # one contiguous run at the end of the sequence: the assistant turn, its end-of-turn token included
        assert labelled.tolist() == list(range(n - len(labelled), n))
        assert tok.decode(ids[labelled]) == row["target"] + "<|im_end|>"
        assert (labels[labelled] == ids[labelled]).all()
        assert tok.decode(ids[: n - len(labelled)]).endswith("<|im_start|>assistant\n")
        n_image = int((ids == image_id).sum())
        assert n_image == (9 if row["image"] else 0)  # an 84x84 image is 3x3 merged tokens
        assert batch["mm_token_type_ids"][i].sum() == n_image and not (labels[ids == image_id] != IGNORE_INDEX).any()
        assert collator.length(row) == n
    # pixel rows only for the two examples with an image (4 patches per merged token)
    assert batch["pixel_values"].shape[0] == 2 * 9 * 4 and batch["image_grid_thw"].shape == (2, 3)
    with pytest.raises(RecordError, match=f"record '{rows[0]['question_id']}': field 'image'"):
        collator([dict(rows[0], image="/nonexistent/picture.png")])


def reflection_loss(logits, labels, task_ids, alpha, beta, reduction="mixture"):
    """(loss, per-term token means) of one batch, from the functions each train worker's step uses."""
    sums, counts = term_nll_sums(logits, labels, task_ids), term_token_counts(labels, task_ids)
    means = (sums.detach() / counts.clamp(min=1.0)).tolist()
    return combine(sums, counts, term_weights(alpha, beta), reduction), dict(zip(TERMS, means))


def _hf_loss(model, batch, pick, keep_tasks):
    """The model's own causal-LM loss (one token mean) on the labels of the examples whose task is in keep_tasks."""
    labels = batch["labels"].clone()
    for i, r in enumerate(pick):
        if r["task"] not in keep_tasks:
            labels[i] = IGNORE_INDEX
    return model(**model_inputs(batch), labels=labels).loss


@pytest.fixture(scope="module")
def one_of_each(tiny_model_dir, processor, train_uri):
    """(model, batch, rows, logits): one example of each task in one batch."""
    rows = read_examples(train_uri)
    pick = [next(r for r in rows if r["task"] == t) for t in ("warmup", "sft", "refine", "select")]
    batch = ReflectionCollator(processor)(pick)
    model = load_model(tiny_model_dir)
    return model, batch, pick, model(**model_inputs(batch)).logits


def test_each_term_reports_the_token_mean_of_its_own_examples(one_of_each):
    model, batch, pick, logits = one_of_each
    _, terms = reflection_loss(logits, batch["labels"], batch["task_ids"], alpha=0.5, beta=2.0)
    assert terms["sft"] == pytest.approx(_hf_loss(model, batch, pick, {"warmup", "sft"}).item(), rel=1e-5)
    assert terms["refine"] == pytest.approx(_hf_loss(model, batch, pick, {"refine"}).item(), rel=1e-5)
    assert terms["select"] == pytest.approx(_hf_loss(model, batch, pick, {"select"}).item(), rel=1e-5)


def test_mixture_at_alpha_beta_one_is_the_plain_token_mean_of_the_whole_batch(one_of_each):
    model, batch, pick, logits = one_of_each
    loss, _ = reflection_loss(logits, batch["labels"], batch["task_ids"], alpha=1.0, beta=1.0, reduction="mixture")
    everything = _hf_loss(model, batch, pick, {"warmup", "sft", "refine", "select"})
    assert loss.item() == pytest.approx(everything.item(), rel=1e-6)
    grads = [torch.autograd.grad(x, model.lm_head.weight, retain_graph=True)[0] for x in (loss, everything)]
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_mixture_weighs_each_token_by_its_term_over_all_tokens(one_of_each):
    model, batch, pick, logits = one_of_each
    loss, terms = reflection_loss(logits, batch["labels"], batch["task_ids"], alpha=0.5, beta=2.0, reduction="mixture")
    tokens = {t: int(((batch["labels"][i, 1:] != IGNORE_INDEX).sum())) for i, t in enumerate(r["task"] for r in pick)}
    sft_tokens = tokens["warmup"] + tokens["sft"]
    expected = (terms["sft"] * sft_tokens + 0.5 * terms["refine"] * tokens["refine"]
                + 2.0 * terms["select"] * tokens["select"]) / sum(tokens.values())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_per_term_is_the_weighted_sum_of_the_term_means_and_alpha_beta_zero_is_plain_sft(one_of_each, processor):
    model, batch, pick, logits = one_of_each
    loss, terms = reflection_loss(logits, batch["labels"], batch["task_ids"], alpha=0.5, beta=2.0, reduction="per_term")
    assert loss.item() == pytest.approx(terms["sft"] + 0.5 * terms["refine"] + 2.0 * terms["select"], rel=1e-5)

    # alpha = beta = 0: the same value and the same gradients as plain SFT on the SFT/warm-up examples
    zero, _ = reflection_loss(logits, batch["labels"], batch["task_ids"], alpha=0.0, beta=0.0, reduction="per_term")
    plain = _hf_loss(model, batch, pick, {"warmup", "sft"})
    grads = [torch.autograd.grad(x, model.lm_head.weight, retain_graph=True)[0] for x in (zero, plain)]
    assert zero.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize("reduction", ["mixture", "per_term"])
def test_a_term_without_tokens_contributes_nothing(one_of_each, processor, reduction):
    model, _, pick, _ = one_of_each
    only_sft = ReflectionCollator(processor)(pick[:2])
    logits = model(**model_inputs(only_sft)).logits
    loss, terms = reflection_loss(logits, only_sft["labels"], only_sft["task_ids"], 1.0, 1.0, reduction=reduction)
    assert terms["refine"] == 0.0 and terms["select"] == 0.0 and loss.item() == pytest.approx(terms["sft"])


def test_an_unknown_loss_reduction_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="training.loss_reduction"):
        config_from_dict({"training": {"loss_reduction": "mean"}})


def test_step_plan_accumulates_to_the_global_batch_and_is_seeded():
    tcfg = RunConfig().training.model_copy(update=dict(global_batch_size=16, micro_batch_size=4, epochs=2.0, warmup_ratio=0.1))
    plan = make_plan(20, tcfg, world_size=2)
    assert (plan.micro_batch, plan.grad_accum, plan.global_batch, plan.steps, plan.warmup_steps) == (4, 2, 16, 3, 1)
    batches = global_batches(20, plan, seed=0)
    assert batches == global_batches(20, plan, seed=0) != global_batches(20, plan, seed=1)
    assert sorted(batches[0] + batches[1][:4]) == list(range(20))  # the first epoch is a permutation
    lengths = list(range(20))
    parts = [worker_micro_batches(batches[0], lengths, plan, rank) for rank in (0, 1)]
    assert all(len(p) == 2 and all(len(mb) == 4 for mb in p) for p in parts)
    assert sorted(i for p in parts for mb in p for i in mb) == sorted(batches[0])
    small = make_plan(5, tcfg.model_copy(update=dict(global_batch_size=2)), world_size=2)
    assert (small.micro_batch, small.grad_accum, small.global_batch) == (1, 1, 2)
    assert [lr_factor(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0] and lr_factor(0, 0) == 1.0


# -- Ray Train + DeepSpeed -----------------------------------------------------------------------------------------


def _cfg(workers: int, **training) -> RunConfig:
    base = dict(lr=3e-3, epochs=6.0, global_batch_size=8, micro_batch_size=2, zero_stage=2, warmup_ratio=0.0)
    return RunConfig.model_validate(
        {"training": {**base, **training}, "resources": {"num_train_workers": workers, "cpus_per_train_worker": 1}}
    )


def _kill_a_train_worker_after_the_first_checkpoint(ray_dir: Path, killed: dict, done: threading.Event) -> None:
    """SIGKILL one Ray Train worker process as soon as Ray Train has registered a checkpoint under `ray_dir`."""
    from ray._private.state import actors

    pids: list[int] = []
    while not done.is_set() and "pid" not in killed:
        if not pids:
            pids = [a["Pid"] for a in actors().values()
                    if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE" and a["Pid"]]
        snapshot = next(ray_dir.glob("*/checkpoint_manager_snapshot.json"), None)
        if pids and snapshot is not None and '"step-' in snapshot.read_text(errors="replace"):
            os.kill(pids[-1], signal.SIGKILL)
            killed["pid"] = pids[-1]
        time.sleep(0.02)


@pytest.mark.slow
def test_two_workers_zero2_loss_falls_resumes_after_a_failure_and_exports(ray_local, tiny_model_dir, train_uri, tmp_path,
                                                                         synthetic_data_dir):
    cfg = _cfg(2, checkpoint_every_steps=4, max_failures=1)
    out = str(tmp_path / "round-001" / "checkpoint")
    events = tmp_path / "tensorboard" / "train-round-001"
    killed: dict = {}
    done = threading.Event()
    killer = threading.Thread(target=_kill_a_train_worker_after_the_first_checkpoint,
                              args=(tmp_path / "round-001" / "checkpoint.ray", killed, done), daemon=True)
    killer.start()
    try:
        # given relative to this directory, as a run's own are (storage.root: runs): the workers start elsewhere
        result = train(cfg, train_uri, tiny_model_dir, out, round_index=1, events_uri=os.path.relpath(events))
    finally:
        done.set()
        killer.join(timeout=30)
    m = result.metrics
    assert "pid" in killed, "no checkpoint was registered while the workers ran"
    assert result.checkpoint_dir == out and json.loads(json.dumps(result.to_dict()))["checkpoint_dir"] == out
    assert m["plan"] == {"world_size": 2, "micro_batch": 2, "grad_accum": 2, "global_batch": 8, "steps": 15, "warmup_steps": 0}
    assert m["resumed_from_step"] in (4, 8, 12)  # the killed worker's group restarted from a registered checkpoint
    assert "worker_group_seconds" not in m  # the resumed attempt's loop did not start with this fit's worker group
    history = m["history"]
    assert [h["step"] for h in history] == list(range(1, 16))
    for term in ("sft", "refine", "select"):
        assert all(f"loss_{term}" in h for h in history) and sum(h[f"tokens_{term}"] for h in history) > 0
        assert m[f"final_loss_{term}"] is not None
    first, last = history[0]["loss_sft"], sum(h["loss_sft"] for h in history[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    last_step = history[-1]  # the default loss: one token mean over the mixture (alpha = beta = 1)
    tokens = {t: last_step[f"tokens_{t}"] for t in ("sft", "refine", "select")}
    assert last_step["loss"] == pytest.approx(
        sum(last_step[f"loss_{t}"] * n for t, n in tokens.items()) / sum(tokens.values()), rel=1e-5)

    # Rank 0's TensorBoard scalars: every step once (the failed attempt's steps after its last checkpoint are
    # purged by the resumed one, whose values are the history's), per term and the learning rate.
    scalars = tensorboard_scalars(events)
    assert set(scalars) == {f"train/{k}" for k in ("loss", "loss_sft", "loss_refine", "loss_select", "lr",
                                                     "step_seconds")}
    for key in ("loss", "loss_sft", "loss_refine", "loss_select", "lr"):
        assert [step for step, _ in scalars[f"train/{key}"]] == list(range(1, 16)), key
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([h[key] for h in history], rel=1e-5), key

    # the export is a plain Hugging Face directory that the loader and the hf engine use
    assert not list(Path(out).parent.glob(".checkpoint.tmp-*"))
    model, processor = load_model_and_processor(out)
    base_model = load_model(tiny_model_dir)
    assert not torch.equal(model.lm_head.weight, base_model.lm_head.weight)
    vision = [n for n, _ in model.named_parameters() if ".visual." in f".{n}"]
    assert vision and all(torch.equal(model.get_parameter(n), base_model.get_parameter(n)) for n in vision)  # frozen
    record = next(iter(TASK.read(synthetic_data_dir, "train")))
    engine = create_engine("hf", out, torch_threads=1)
    [output] = engine.generate([GenerationRequest(TASK.cot_prompt(record), load_image(record.image), record.id)], SamplingParams(max_new_tokens=8))
    assert output.error is None and output.n_tokens[0] >= 1


def test_lora_trains_adapters_and_exports_merged_weights(ray_local, tiny_model_dir, train_uri, tmp_path, processor):
    # max_seq_len below the longest (refine) examples: those are skipped and counted, never truncated
    cfg = _cfg(1, finetune="lora", epochs=2.0, lr=1e-2, max_seq_len=132, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    collator = ReflectionCollator(processor)
    too_long = [e for e in read_examples(train_uri) if collator.length(e) > 132]
    assert 0 < len(too_long) < 20
    out = str(tmp_path / "lora")
    result = train(cfg, train_uri, tiny_model_dir, out, round_index=1)
    m = result.metrics
    assert m["skipped_too_long"] == len(too_long) and m["examples"] == 20 - len(too_long)
    assert {(s["question_id"], s["task"]) for s in m["skipped_examples"]} == {(e["question_id"], e["task"]) for e in too_long}
    assert m["steps"] == -(-2 * m["examples"] // 8)
    # where the wall time outside the steps went (benchmarks/round.py): each part measured, together within it
    parts = [m[k] for k in ("worker_group_seconds", "import_seconds", "setup_seconds", "final_report_seconds",
                            "publish_seconds")]
    assert all(p >= 0 for p in parts) and m["worker_group_seconds"] > 0
    assert sum(parts) + m["train_seconds"] <= m["seconds"] + 0.5
    assert not (Path(out) / "adapter_config.json").exists()  # merged: loads like any checkpoint
    model, base_model = load_model(out), load_model(tiny_model_dir)
    assert set(n for n, _ in model.named_parameters()) == set(n for n, _ in base_model.named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.allclose(p, base_model.get_parameter(n))}
    assert changed and all(n.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"} for n in changed), changed
    assert not any(".visual." in f".{n}" for n in changed)


@pytest.mark.slow
def test_a_trained_vision_tower_trains_on_two_workers_when_a_micro_batch_has_no_image(
        ray_local, tiny_model_dir, synthetic_data_dir, tmp_path):
    # One example with an image among text-only ones (a task without images, or the pretraining's arithmetic): each
    # step one rank's micro-batch has no image. With the vision tower trained, that rank must still give it a
    # (zero) gradient, or ZeRO's gradient reduction differs between the ranks.
    from r3v_ray.method.reflect import example

    with_image = _examples(synthetic_data_dir, 1)[0]
    text = [example("warmup", f"t{i}", f"What is {i} + 1?", f"{i} + 1 = {i + 1}.", None) for i in range(3)]
    uri = str(tmp_path / "train.parquet")
    write_examples(uri, [with_image] + text)
    out = str(tmp_path / "checkpoint")
    cfg = _cfg(2, freeze_vision=False, epochs=2.0, global_batch_size=4, micro_batch_size=1)
    result = train(cfg, uri, tiny_model_dir, out, round_index=1)
    assert result.metrics["steps"] == 2 and result.metrics["examples"] == 4
    model, base_model = load_model(out), load_model(tiny_model_dir)
    changed = {n for n, p in model.named_parameters() if not torch.allclose(p, base_model.get_parameter(n))}
    assert any(".visual." in f".{n}" for n in changed), "the vision tower did not train"


def test_zero3_with_a_trained_vision_tower_refuses_examples_without_an_image_before_training(
        tiny_model_dir, synthetic_data_dir, tmp_path):
    from r3v_ray.method.reflect import example
    from r3v_ray.training.trainer import TrainingError

    uri = str(tmp_path / "train.parquet")
    write_examples(uri, _examples(synthetic_data_dir, 1)[:1] + [example("warmup", "t0", "What is 1 + 1?", "2.", None)])
    cfg = _cfg(2, freeze_vision=False, zero_stage=3)
    with pytest.raises(TrainingError, match=r"1 examples have no image \(first: 't0'\), which training.zero_stage 3"):
        train(cfg, uri, tiny_model_dir, str(tmp_path / "out"), round_index=1)


# per_term at alpha = beta = 0 is plain SFT on the SFT/warm-up labels (refine/select in the batches, weight 0); mixture at
# alpha = beta = 1 is plain SFT on every label, one token mean over the global batch: with 2 workers x 2 micro-batches
# of 1 it must still be the whole batch's mean, not a mean of means.
PLAIN_LOOPS = {
    "per_term": (dict(alpha=0.0, beta=0.0, micro_batch_size=4), 1, ("warmup", "sft")),
    "mixture": (dict(alpha=1.0, beta=1.0, micro_batch_size=1), 2, ("warmup", "sft", "refine", "select")),
}


@pytest.mark.parametrize("reduction", list(PLAIN_LOOPS))
def test_ray_train_reproduces_a_plain_sft_loop(ray_local, tiny_model_dir, train_uri, tmp_path, processor, reduction):
    training, workers, trained_tasks = PLAIN_LOOPS[reduction]
    cfg = _cfg(workers, loss_reduction=reduction, global_batch_size=4, epochs=1.0, lr=1e-3, warmup_ratio=0.4,
               **training)
    out = str(tmp_path / "star")
    # image paths relative to the caller's directory reach the workers too
    rel_uri = str(tmp_path / "relative.parquet")
    write_examples(rel_uri, [dict(e, image=os.path.relpath(e["image"])) if e["image"] else e for e in read_examples(train_uri)])
    assert not os.path.isabs(read_examples(rel_uri)[0]["image"])
    history = train(cfg, rel_uri, tiny_model_dir, out, round_index=1).metrics["history"]

    # Plain SFT, written out: the model's own loss on the trained labels of the whole global batch, torch AdamW,
    # clipping.
    tcfg = cfg.training
    examples = read_examples(train_uri)
    collator = ReflectionCollator(processor)
    plan = make_plan(len(examples), tcfg.model_copy(update=dict(micro_batch_size=4)), world_size=1)
    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    model.train()
    for name, param in model.named_parameters():
        param.requires_grad_(".visual." not in f".{name}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    plain_losses = []
    for step, ids in enumerate(global_batches(len(examples), plan, tcfg.seed)):
        rows = [examples[i] for i in ids]
        batch = collator(rows)
        labels = batch["labels"].clone()
        labels[[r["task"] not in trained_tasks for r in rows]] = IGNORE_INDEX
        loss = model(**model_inputs(batch), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.gradient_clipping)
        for group in optimizer.param_groups:
            group["lr"] = tcfg.lr * lr_factor(step, plan.warmup_steps)
        optimizer.step()
        optimizer.zero_grad()
        plain_losses.append(loss.item())

    assert len(history) == len(plain_losses) == 5
    assert [h["loss"] for h in history] == pytest.approx(plain_losses, rel=1e-4)
    if reduction == "per_term":
        assert [h["loss_sft"] for h in history] == pytest.approx(plain_losses, rel=1e-4)
    assert any(h["loss_refine"] > 0 for h in history)  # refine/select were in the batches
    trained = load_model(out)
    for name, param in model.named_parameters():
        assert torch.allclose(trained.get_parameter(name), param, atol=1e-5), name


def test_last_epoch_losses_weigh_each_term_by_its_tokens_and_leave_an_untrained_term_empty():
    from r3v_ray.training.trainer import last_epoch_losses

    def step(loss, sft, refine, tokens_sft, tokens_refine):
        return {"loss": loss, "loss_sft": sft, "loss_refine": refine, "loss_select": 0.0,
                "tokens_sft": tokens_sft, "tokens_refine": tokens_refine, "tokens_select": 0}

    # 8 examples, global batch 4: the last epoch is the last 2 steps; the very last step held no refine example
    history = [step(9.0, 9.0, 9.0, 10, 10), step(2.0, 1.0, 3.0, 10, 30), step(1.0, 1.0, 0.0, 20, 0)]
    out = last_epoch_losses(history, examples=8, global_batch=4)
    assert out["last_epoch_loss"] == pytest.approx((2.0 * 40 + 1.0 * 20) / 60)
    assert out["last_epoch_loss_sft"] == pytest.approx(1.0)
    assert out["last_epoch_loss_refine"] == pytest.approx(3.0)  # not the last step's 0
    assert out["last_epoch_loss_select"] is None


def test_the_train_stage_line_shows_a_term_without_examples_as_a_dash():
    from r3v_ray.pipeline.round import _brief

    metrics = {"steps": 5, "last_epoch_loss": 0.5, "last_epoch_loss_sft": 0.4, "last_epoch_loss_refine": 0.7,
               "last_epoch_loss_select": None}
    assert _brief("train", {"metrics": metrics}) == \
        ": 5 steps, loss over the last epoch 0.5000 (sft 0.4000, refine 0.7000, select -)"
