"""Every supported model family (r3v_ray/models/families.py) on CPU, in one suite parametrised by family.

Per family (module-scoped: each family's tiny model, data and Ray work are shared by its tests):
- the tiny model is an ordinary Hugging Face directory of its family, built with the local tokenizer, and its
  family is read from config.json, never from the path; prompts and training labels follow the family's template;
- (slow) one trip through the loop: a round of sampling with the hf engine (Ray Data), R3V training data from it,
  full and LoRA fine-tuning (Ray Train + DeepSpeed) with the vision tower frozen (no vision weight changes),
  export, reload, an evaluation, and one request to the checkpoint served by Ray Serve;
- (vllm, in .venv-vllm) the same family sampled and evaluated by a pool of vLLM actors, whose greedy answers are
  the hf engine's where both run in float32.
A family missing from the installed transformers (or vLLM) is skipped with that reason. Then bad input (an
unsupported architecture, a tokenizer or chat template without what the family's prompts need) and the GPU
configs of each family checked by `r3v plan` against cluster.yaml.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
from pathlib import Path
from typing import get_args

import pytest
import torch

from r3v_ray.run import store
from r3v_ray.cli import main as r3v
from r3v_ray.config import ModelFamily, config_from_dict, load_config
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.models import FAMILIES, ModelFamilyError, family_of, load_model, load_model_and_processor, load_processor
from r3v_ray.models.chat import chat_prompt
from r3v_ray.models.families import ASSISTANT_HEADER, CLOSED_THINKING, IMAGE_PLACEHOLDER
from r3v_ray.models.tiny import TinySpec, build_tiny_model
from r3v_ray.pipeline.prepare import tokenizer_corpus
from r3v_ray.tasks import get_task, load_image

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW = 12
GPU_CONFIGS = {  # config -> the family of its checkpoint (a hub name: its config.json is not read offline)
    "qwen2vl-7b-geoqa.yaml": ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
    "qwen2_5vl-7b-geoqa.yaml": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
    "qwen3vl-8b-geoqa.yaml": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
}


def _missing_from_transformers(name: str) -> str | None:
    import transformers

    family = FAMILIES[name]
    if family.transformers_class() is None:
        return f"transformers {transformers.__version__} has no {family.architecture} ({family.title})"
    return None


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    reason = _missing_from_transformers(request.param)
    if reason:
        pytest.skip(reason)
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model_dir(family, tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family.name}"), TinySpec(family=family.name), corpus=tokenizer_corpus()))


@pytest.fixture(scope="module")
def task_params(family) -> dict:
    return {"cell": family.patch_size * family.merge_size}  # one object per merged visual token of the family


@pytest.fixture(scope="module")
def task(task_params):
    return get_task("synthetic", **task_params)


@pytest.fixture(scope="module")
def data_dir(family, task, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp(f"data-{family.name}")
    task.write_dataset(out, num_train=4, num_test=3, seed=0)
    return str(out)


def _config(family, model_dir: str, data_dir: str, task_params: dict, root: Path, **sections) -> "RunConfig":
    data = {
        "name": f"family-{family.name}",
        "rounds": 1,
        "model": {"path": model_dir, "dtype": "float32"},
        "task": {"name": "synthetic", "data_dir": data_dir, "params": task_params},
        "sampling": {"num_samples": 2, "max_new_tokens": MAX_NEW, "batch_size": 4, "max_prompt_tokens": 512},
        "training": {"epochs": 1.0, "global_batch_size": 8, "micro_batch_size": 4, "lr": 3e-3, "max_seq_len": 512,
                     "warmup_ratio": 0.0, "checkpoint_every_steps": 0},
        "evaluation": {"n": 2, "max_new_tokens": MAX_NEW, "zero_shot": False, "select_max_new_tokens": 8},
        "resources": {"num_samplers": 1, "num_train_workers": 1},
        "serve": {"max_new_tokens": MAX_NEW, "max_n": 4},
        "storage": {"root": str(root)},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data, f"<{family.name} test config>")


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# -- the tiny model of each family ----------------------------------------------------------------------------------


def test_the_config_lists_exactly_the_supported_families():
    assert set(get_args(ModelFamily)) == set(FAMILIES)



def test_the_hf_engine_batches_each_questions_encoding_as_the_processor_batches_its_rows(model_dir, task):
    """The hf engine runs the processor once per question and batches its n rows from that (hf.collate): the batch
    is the one a processor call over the rows makes, for rows of different lengths, with and without images."""

    from r3v_ray.engines.hf import collate

    processor = load_processor(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    processor.tokenizer.padding_side = "left"
    records = list(task.generate_records("test", 3, seed=5))
    prompts = [chat_prompt(processor, task.cot_prompt(r) + " extra" * i) for i, r in enumerate(records)]
    texts = [chat_prompt(processor, ("How many? " * (2 * i + 1)), False) for i in range(3)]
    rows = [0, 0, 1, 2, 2, 1]  # question of each row (n samples per question, chunks that cut across questions)
    for prompts_, images in ((prompts, [task.render(r) for r in records]), (texts, [None] * 3)):
        def encode(ps, ims):
            kwargs = {"images": ims} if ims[0] is not None else {}
            return dict(processor(text=ps, return_tensors="pt", padding=True, **kwargs))

        once = [encode([prompts_[q]], [images[q]]) for q in range(3)]
        want = encode([prompts_[q] for q in rows], [images[q] for q in rows])
        got = collate([once[q] for q in rows], pad_id)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key

def test_the_tiny_model_is_an_ordinary_directory_of_its_family(family, model_dir, task, tmp_path):
    files = json.loads((Path(model_dir) / "config.json").read_text())
    assert files["model_type"] == family.name and files["architectures"] == [family.architecture]
    for name in ("processor_config.json", "tokenizer_config.json"):  # the family's own processor class, not ours
        assert json.loads((Path(model_dir) / name).read_text())["processor_class"] == family.processor
    video = json.loads((Path(model_dir) / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == family.video_processor and video["patch_size"] == family.patch_size

    # The family comes from config.json, not from the path: a directory named like another family is still itself.
    lookalike = tmp_path / ("Qwen3-VL-8B-Instruct" if family.name == "qwen2_vl" else "Qwen2-VL-7B-Instruct")
    shutil.copytree(model_dir, lookalike)
    assert family_of(lookalike) is family
    model, processor = load_model_and_processor(lookalike)
    assert type(model).__name__ == family.architecture and processor.family is family
    ip = processor.image_processor
    assert (ip.patch_size, tuple(ip.image_mean)) == (family.patch_size, family.image_mean)

    record = next(task.generate_records("test", 1, seed=3))
    prompt = chat_prompt(processor, task.cot_prompt(record))
    assert IMAGE_PLACEHOLDER in prompt
    has_system = prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert has_system == family.name.startswith("qwen2")  # Qwen3 templates add no default system turn
    assert prompt.endswith(ASSISTANT_HEADER + CLOSED_THINKING if family.thinking else ASSISTANT_HEADER)
    enc = processor(text=[prompt], images=[task.render(record)], return_tensors="pt")
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == 9  # a 3 x 3 grid of merged patches
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    other = task.render(next(task.generate_records("test", 2, seed=4)))
    with torch.no_grad():
        first = model(**enc).logits[0, -1]
        second = model(**processor(text=[prompt], images=[other], return_tensors="pt")).logits[0, -1]
    assert not torch.allclose(first, second)  # the image reaches the language model

    tokenizer = processor.tokenizer
    if family.name.startswith("qwen3"):  # the thinking markers: one token each, not special (decoding keeps them)
        ids = tokenizer("<think>x</think>", add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think>" and len(ids) <= 3


def test_training_labels_are_the_target_and_end_of_turn_after_the_familys_prompt(family, model_dir, data_dir, task):
    # Qwen3.5's empty thinking block belongs to the prompt (masked), never to the target.
    from r3v_ray.training.collator import IGNORE_INDEX, ReflectionCollator

    processor = load_processor(model_dir)
    record = next(task.read(data_dir, "train"))
    example = {"task": "sft", "question_id": record.id, "prompt": task.cot_prompt(record),
               "target": record.rationale, "image": record.image}
    encoded = ReflectionCollator(processor).encode(example)
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == record.rationale + "<|im_end|>"
    prompt_text = processor.tokenizer.decode(encoded.input_ids[: len(encoded.input_ids) - len(labelled)])
    assert prompt_text.endswith(CLOSED_THINKING if family.thinking else ASSISTANT_HEADER)


# -- each family through the loop (main suite) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_url(ray_local):
    """Ray Serve's HTTP proxy on 127.0.0.1 for this module; each family deploys its own app under its prefix."""
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _teacher_pool(records: list, samples: list[dict]) -> list[dict]:
    """The round's samples plus the teacher rationale of each question as a positive, so that a random model's
    pool still gives self-CoT, self-refine and self-select examples of every question."""
    teacher = [dict(question_id=r.id, round=1, sample_index=100, rationale=r.rationale, extracted_answer=r.answer,
                    correct=True, n_tokens=0) for r in records]
    wrong = [dict(question_id=r.id, round=1, sample_index=101, rationale="I count many objects.\nAnswer: 99",
                  extracted_answer="99", correct=False, n_tokens=0) for r in records]
    return samples + teacher + wrong


def _changed(model, base) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))}


@pytest.fixture(scope="module")
def family_round(family, model_dir, data_dir, task, task_params, ray_local, tmp_path_factory) -> dict:
    """A round of the family's tiny model: S=2 rationales per training question sampled by the hf engine through
    the Ray Data pool, R3V's training data built from them, then full fine-tuning and LoRA, each exported as a
    Hugging Face directory: {"cfg", "out" (a directory), "stats", "samples", "examples", "build_stats", "trained"
    ({finetune: (result, checkpoint)})}. Read it only."""
    from r3v_ray.method.reflect import build_training_data
    from r3v_ray.pipeline.sampling import params_from_config, records_to_rows, sample
    from r3v_ray.training import train, write_examples

    out = tmp_path_factory.mktemp(f"round-{family.name}")
    cfg = _config(family, model_dir, data_dir, task_params, out / "runs")
    train_records = list(task.read(data_dir, "train"))
    samples_uri = str(out / "samples.parquet")
    stats = sample(cfg, model_dir, records_to_rows(train_records, task), samples_uri,
                   params_from_config(cfg.sampling, seed=cfg.seed), round_index=1)
    samples = store.read_parquet(samples_uri).to_pylist()
    examples, build_stats = build_training_data(_teacher_pool(train_records, samples),
                                                {r.id: r for r in train_records}, task, cfg.reflect, 1)
    train_uri = str(out / "train.parquet")
    write_examples(train_uri, examples)
    trained = {}
    for finetune, extra in (("full", {}), ("lora", {"lr": 1e-2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})):
        tcfg = _config(family, model_dir, data_dir, task_params, out / "runs", training={"finetune": finetune, **extra})
        checkpoint = str(out / f"checkpoint-{finetune}")
        trained[finetune] = (train(tcfg, train_uri, model_dir, checkpoint, round_index=1), checkpoint)
    return {"cfg": cfg, "out": out, "stats": stats, "samples": samples, "num_train": len(train_records),
            "examples": examples, "build_stats": build_stats, "trained": trained}


@pytest.mark.slow
def test_each_family_samples_through_the_ray_data_pool(family_round):
    assert family_round["stats"].skipped == [] and len(family_round["samples"]) == 2 * family_round["num_train"]
    assert all(s["n_tokens"] >= 1 for s in family_round["samples"])


@pytest.mark.slow
def test_each_familys_samples_build_every_kind_of_example(family_round):
    assert {e["task"] for e in family_round["examples"]} == {"sft", "refine", "select", "warmup"}, \
        family_round["build_stats"]


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_each_familys_fine_tune_trains_every_example_and_leaves_the_vision_tower_frozen(
        family_round, family, model_dir, finetune):
    result, checkpoint = family_round["trained"][finetune]
    assert result.metrics["examples"] == len(family_round["examples"]) and result.metrics["skipped_too_long"] == 0
    base = load_model(model_dir)
    vision = [n for n, _ in base.named_parameters() if family.is_vision(n)]
    assert vision and any(".merger." in n for n in vision)
    changed = _changed(load_model(checkpoint), base)
    assert changed and not [n for n in changed if family.is_vision(n)]


@pytest.mark.slow
def test_each_familys_lora_adapts_its_target_modules(family_round, family, model_dir):
    changed = _changed(load_model(family_round["trained"]["lora"][1]), load_model(model_dir))
    adapted = {n.rsplit(".", 2)[-2] for n in changed}
    assert adapted <= set(family.lora_targets), adapted
    if family.name == "qwen3_5":  # its linear-attention layers are adapted too
        assert {"in_proj_qkv", "out_proj"} <= adapted, adapted


@pytest.mark.slow
def test_each_familys_evaluation_records_what_an_engine_on_the_checkpoint_generates(family_round, family, task,
                                                                                   data_dir):
    # Reload and evaluate the full fine-tune: Test@1 from the greedy pass is what an hf engine on it says.
    from r3v_ray.pipeline.evaluate import evaluate

    checkpoint, out = family_round["trained"]["full"][1], family_round["out"]
    test_records = list(task.read(data_dir, "test"))
    metrics = evaluate(family_round["cfg"], checkpoint, test_records, task, str(out / "eval"), 1)
    assert metrics["num_questions"] == len(test_records) and metrics["skipped"] == []
    assert {"test@1", "oracle@2", "majority@2", "select@2"} <= set(metrics)
    engine = create_engine("hf", checkpoint, torch_threads=1)
    assert engine.processor.family is family
    requests_ = [GenerationRequest(task.cot_prompt(r), load_image(r.image), r.id) for r in test_records]
    greedy = engine.generate(requests_, SamplingParams(max_new_tokens=MAX_NEW))
    written = {r["question_id"]: r["rationale"] for r in store.read_parquet(str(out / "eval" / "greedy.parquet")).to_pylist()}
    assert written == {r.id: o.texts[0] for r, o in zip(test_records, greedy)}


@pytest.mark.slow
def test_each_familys_lora_checkpoint_served_answers_as_the_same_selection_in_process(
        family_round, family, task, data_dir, serve_url):
    import requests
    from ray import serve

    from r3v_ray.serving.app import build_app
    from r3v_ray.serving.checkpoint import resolve
    from r3v_ray.serving.parsing import parse_select
    from r3v_ray.serving.selector import select_in_process

    cfg, lora = family_round["cfg"], family_round["trained"]["lora"][1]
    record = next(iter(task.read(data_dir, "test")))
    app_name = f"r3v-{family.name}"
    serve.run(build_app(cfg, resolve(checkpoint=lora)), name=app_name, route_prefix=f"/{family.name}")
    try:
        body = {"question": task.question_text(record), "image": _png_b64(task.render(record)), "n": 2,
                "strategy": "self_select", "sampling": {"seed": 5}}
        reply = requests.post(f"{serve_url}/{family.name}/v1/select", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        served = reply.json()
        direct = select_in_process(create_engine("hf", lora, torch_threads=1), task,
                                   parse_select(body, cfg.serve, cfg.evaluation.select_budget))
        assert [c["text"] for c in served["candidates"]] == [c.text for c in direct.candidates]
        assert (served["answer"], served["selector_text"]) == (direct.answer, direct.selector_text)
    finally:
        serve.delete(app_name)


# -- each family on vLLM (the vLLM suite, .venv-vllm) ---------------------------------------------------------------


def _vllm_cannot_run(family) -> str | None:
    from vllm import ModelRegistry
    from vllm.version import __version__

    if family.architecture not in ModelRegistry.get_supported_archs():
        return f"vllm {__version__} registers no {family.architecture} ({family.title})"
    return None


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@pytest.fixture(scope="module")
def vllm_evaluation(family, model_dir, data_dir, task, task_params, ray_local, tmp_path_factory):
    """The family's test split evaluated by a pool of vLLM actors: a sampling pass (N=2 candidates per question at
    T=0.9) plus the greedy and self-select passes, in one pool. Returns (records, dtype, the output directory)."""
    from r3v_ray.pipeline.evaluate import evaluate

    reason = _vllm_cannot_run(family)
    if reason:
        pytest.skip(reason)
    dtype = (family.vllm_cpu_dtype if _on_cpu() else None) or "float32"
    root = tmp_path_factory.mktemp(f"vllm-{family.name}")
    cfg = _config(family, model_dir, data_dir, task_params, root / "runs", model={"dtype": dtype},
                  sampling={"engine": "vllm", "max_model_len": 512, "cpu_kv_cache_gib": 0.25})
    records = list(task.read(data_dir, "test"))
    metrics = evaluate(cfg, model_dir, records, task, str(root / "eval"), 1)
    return records, dtype, root / "eval", metrics


@pytest.mark.vllm
@pytest.mark.slow
def test_each_family_is_sampled_and_evaluated_by_vllm_actors(vllm_evaluation):
    records, _, out, metrics = vllm_evaluation
    assert metrics["skipped"] == [] and {"test@1", "oracle@2", "select@2"} <= set(metrics)
    samples = store.read_parquet(str(out / "samples.parquet")).to_pylist()
    assert sorted((s["question_id"], s["sample_index"]) for s in samples) == sorted(
        (r.id, i) for r in records for i in range(2))
    assert all(s["n_tokens"] >= 1 for s in samples)
    selected = store.read_parquet(str(out / "select.parquet")).to_pylist()
    assert {r["question_id"] for r in selected} == {r.id for r in records}


@pytest.mark.vllm
@pytest.mark.slow
def test_each_familys_vllm_greedy_answers_are_the_hf_engines(family, model_dir, task, vllm_evaluation):
    records, dtype, out, _ = vllm_evaluation
    if dtype != "float32":
        pytest.skip(f"not compared with the float32 hf engine: vLLM's CPU build runs {family.title} in {dtype} only "
                    "(its linear attention), and bfloat16 rounding changes the tiny model's argmax")
    greedy = {r["question_id"]: r["rationale"] for r in store.read_parquet(str(out / "greedy.parquet")).to_pylist()}
    hf = create_engine("hf", model_dir, torch_threads=1)
    expected = hf.generate([GenerationRequest(task.cot_prompt(r), load_image(r.image), r.id) for r in records],
                           SamplingParams(max_new_tokens=MAX_NEW))
    assert greedy == {r.id: o.texts[0] for r, o in zip(records, expected)}


@pytest.mark.vllm
def test_vllm_on_cpu_refuses_qwen3_5_outside_bfloat16_before_starting(tmp_path):
    if not _on_cpu():
        pytest.skip("a GPU vLLM runs Qwen3.5 in any dtype; the refusal is the CPU build's")
    path = build_tiny_model(tmp_path / "q35", TinySpec(family="qwen3_5"), corpus=tokenizer_corpus())
    with pytest.raises(ValueError, match=r"runs Qwen3.5 in bfloat16 only, not float32 \(set model.dtype: bfloat16\)"):
        create_engine("vllm", str(path), dtype="float32")


# -- bad input ------------------------------------------------------------------------------------------------------


def _edited_copy(src: str, dst: Path, config: dict | None = None, template: str | None = None) -> str:
    shutil.copytree(src, dst)
    if config:
        data = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**data, **config}))
    if template is not None:
        if template:
            (dst / "chat_template.jinja").write_text(template)
        else:
            (dst / "chat_template.jinja").unlink()
            tok = json.loads((dst / "tokenizer_config.json").read_text())
            tok.pop("chat_template", None)
            (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return str(dst)


def test_an_unsupported_architecture_is_refused_at_load_with_its_model_type_and_the_supported_ones(tiny_model_dir,
                                                                                                   tmp_path, capsys):
    from r3v_ray.config import TrainingConfig
    from r3v_ray.training.model_setup import build_trainable_model

    # Named like a supported family on purpose: the path never decides.
    path = _edited_copy(tiny_model_dir, tmp_path / "Qwen2-VL-7B-Instruct", config={"model_type": "llava_next"})
    expected = (r"model_type 'llava_next' is not a supported model family; supported: qwen2_vl \(Qwen2-VL\), "
                r"qwen2_5_vl \(Qwen2.5-VL\), qwen3_vl \(Qwen3-VL\), qwen3_5 \(Qwen3.5\)")
    for load in (load_model, load_processor, load_model_and_processor, lambda p: create_engine("hf", p),
                 lambda p: build_trainable_model(p, TrainingConfig())):
        with pytest.raises(ModelFamilyError, match=expected) as info:
            load(path)
        assert path in str(info.value)
    # `r3v serve` refuses it before deploying anything (exit 2, the reason on stderr)
    assert r3v(["serve", "--checkpoint", path]) == 2
    assert "error:" in (err := capsys.readouterr().err) and "model_type 'llava_next'" in err
    no_config = tmp_path / "empty"
    no_config.mkdir()
    with pytest.raises(ModelFamilyError, match="no config.json"):
        load_model(no_config)


_QWEN2_TEMPLATE_NO_IMAGE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<image>{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template, missing", [
    ("", "no chat template found"),
    (_QWEN2_TEMPLATE_NO_IMAGE, "does not render an image as <|vision_start|><|image_pad|><|vision_end|>"),
    (_QWEN2_TEMPLATE_NO_IMAGE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>").replace(
        "<|im_start|>assistant\n", ""), "generation prompt does not end with the assistant header"),
    (_QWEN2_TEMPLATE_NO_IMAGE.replace("<image>", IMAGE_PLACEHOLDER).replace("<|im_end|>\n{% endfor %}",
                                                                           "\n{% endfor %}"),
     "does not end the user's text with <|im_end|>"),
    ("{{ raise_exception('only text') }}", "does not render a user turn with an image (TemplateError: only text)"),
], ids=["none", "no-image-placeholder", "no-generation-prompt", "no-end-of-turn", "broken"])
def test_a_chat_template_without_what_the_family_needs_is_refused_naming_the_missing_piece(tiny_model_dir, tmp_path,
                                                                                           template, missing):
    path = _edited_copy(tiny_model_dir, tmp_path / "m", template=template)
    with pytest.raises(ModelFamilyError, match=re.escape(missing)) as info:
        load_model_and_processor(path)
    assert path in str(info.value)


def test_a_thinking_template_that_ignores_enable_thinking_is_refused(tmp_path):
    from r3v_ray.models.tiny import QWEN3_5_CHAT_TEMPLATE

    src = build_tiny_model(tmp_path / "q35", TinySpec(family="qwen3_5"), corpus=tokenizer_corpus())
    always_thinking = QWEN3_5_CHAT_TEMPLATE.replace("enable_thinking is defined and enable_thinking is false", "false")
    path = _edited_copy(str(src), tmp_path / "q35-thinking", template=always_thinking)
    with pytest.raises(ModelFamilyError, match="opens a thinking block that enable_thinking=False does not close"):
        load_processor(path)


def test_a_tokenizer_without_the_familys_image_token_is_refused(tiny_model_dir, tmp_path):
    path = Path(_edited_copy(tiny_model_dir, tmp_path / "m"))
    data = json.loads((path / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|image_pad|>"]
    data["model"]["vocab"].pop("<|image_pad|>")
    (path / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["image_token"]  # else transformers adds it back as a special token
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFamilyError, match=r"the tokenizer has no <\|image_pad\|> token, which Qwen2-VL prompts need"):
        load_processor(path)


# -- configs --------------------------------------------------------------------------------------------------------


def test_the_tiny_family_is_part_of_the_digest_and_checked_when_the_config_loads():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.model.tiny.family == "qwen2_vl" and demo.hashed()["model"]["tiny"]["family"] == "qwen2_vl"
    other = load_config(ROOT / "configs" / "demo.yaml", ["model.tiny.family=qwen3_vl"])
    assert other.digest() != demo.digest()
    with pytest.raises(Exception, match="model.tiny.family"):
        load_config(ROOT / "configs" / "demo.yaml", ["model.tiny.family=llava"])


def test_a_tiny_model_of_another_family_is_built_where_the_config_says_and_never_reused_as_another(tmp_path):
    from r3v_ray.pipeline.prepare import ensure_model

    cfg = config_from_dict({"model": {"path": str(tmp_path / "m"), "tiny": {"family": "qwen3_vl"}}})
    path = ensure_model(cfg)
    assert family_of(path).name == "qwen3_vl"
    with pytest.raises(ValueError, match="was built with"):
        ensure_model(config_from_dict({"model": {"path": path, "tiny": {}}}))


def test_build_tiny_model_command_builds_each_family(tmp_path, capsys):
    assert r3v(["build-tiny-model", "--family", "qwen2_5_vl", "--out", str(tmp_path / "m")]) == 0
    assert family_of(capsys.readouterr().out.strip()).name == "qwen2_5_vl"


@pytest.mark.parametrize("config", list(GPU_CONFIGS))
def test_gpu_configs_of_each_family_fit_cluster_yaml(config, capsys):
    hub_name, family = GPU_CONFIGS[config]
    cfg = load_config(ROOT / "configs" / config)
    assert cfg.model.path == hub_name and cfg.task.name == "geoqa" and cfg.sampling.engine == "vllm"
    assert FAMILIES[family].title in (ROOT / "configs" / config).read_text()
    # Real checkpoints fit a vLLM engine on an A10G only with a bounded context (their own runs to 128k tokens).
    assert cfg.sampling.max_model_len is not None or family == "qwen2_vl"
    assert r3v(["plan", "--config", str(ROOT / "configs" / config), "--cluster", str(ROOT / "cluster.yaml"),
                "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["sample"]["nodes"] == {"gpu-sampler": 8} and stages["eval"]["nodes"] == {"gpu-sampler": 8}
    assert stages["train"]["nodes"] == {"gpu-trainer": 1} and stages["serve"]["nodes"] == {"gpu-sampler": 1}
    assert data["notes"] == []
