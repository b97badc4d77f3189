import json
from pathlib import Path

import torch

from r3v_ray.models import ImageOnlyQwen2VLProcessor, chat_example, chat_prompt, load_model_and_processor
from r3v_ray.tasks import get_task


def test_tiny_model_saves_reloads_and_generates_from_an_image(tiny_model_dir):
    files = {p.name for p in Path(tiny_model_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"} <= files
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"

    model, processor = load_model_and_processor(tiny_model_dir)
    assert isinstance(processor, ImageOnlyQwen2VLProcessor)
    task = get_task("synthetic")
    record = next(task.generate_records("test", 1, seed=3))
    text = chat_prompt(processor, task.cot_prompt(record))
    assert "<|image_pad|>" in text and text.endswith("<|im_start|>assistant\n")
    enc = processor(text=[text], images=[task.render(record)], return_tensors="pt")
    # an 84x84 image is 3x3 merged visual tokens, and the processor expanded the placeholder to exactly that
    n_image_tokens = int((enc["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == 9
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_the_image_reaches_the_language_model(tiny_model_dir):
    # Two different images, same text: the logits must differ, or the vision tower is disconnected.
    model, processor = load_model_and_processor(tiny_model_dir)
    task = get_task("synthetic")
    a, b = list(task.generate_records("test", 2, seed=0))
    text = chat_prompt(processor, task.cot_prompt(a))
    logits = []
    for rec in (a, b):
        enc = processor(text=[text], images=[task.render(rec)], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**enc).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


def test_chat_example_ends_with_end_of_turn(tiny_model_dir):
    _, processor = load_model_and_processor(tiny_model_dir)
    prompt, completion = chat_example(processor, "How many?", "Answer: 3")
    assert completion == "Answer: 3<|im_end|>"
    ids = processor.tokenizer(completion).input_ids
    assert ids[-1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
