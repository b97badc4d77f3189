"""Serving with `serve.engine: vllm`: the Serve app with a real vLLM engine in its sampler replica (CPU here),
answered through the openai client on 127.0.0.1. One app for the module, torn down before its Ray."""

from __future__ import annotations

import argparse
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import free_port
from PIL import Image

from r3v_ray.config import ServeConfig
from r3v_ray.engines import create_engine
from r3v_ray.serving.parsing import parse_select
from r3v_ray.serving.selector import select_in_process
from r3v_ray.tasks import get_task

pytestmark = pytest.mark.vllm
TASK = get_task("synthetic")
QUESTION = "How many red objects are there?"
MAX_NEW = 16
ENGINE_SETTINGS = ["model.dtype=float32", "sampling.max_model_len=512", "sampling.cpu_kv_cache_gib=0.25"]


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def image():
    return TASK.render(next(TASK.generate_records("test", 1, 0)))


@pytest.fixture(scope="module")
def served(ray_local, tiny_model_dir):
    """`r3v serve --checkpoint M --set serve.engine=vllm`: one vLLM sampler replica on a CPU of its own."""
    from ray import serve

    from r3v_ray.serving.launch import add_serve_args, start

    overrides = ["serve.engine=vllm", f"serve.max_new_tokens={MAX_NEW}", "evaluation.select_max_new_tokens=8",
                 "serve.max_n=4", "serve.app_name=r3v-vllm-test", *ENGINE_SETTINGS]
    argv = ["--checkpoint", tiny_model_dir, "--port", str(free_port())] + [a for o in overrides for a in ("--set", o)]
    url, model_id = start(add_serve_args(argparse.ArgumentParser()).parse_args(argv))
    yield {"url": url, "model": model_id}
    serve.shutdown()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """The served engine's settings in this process, to check what the app answers."""
    return create_engine("vllm", tiny_model_dir, dtype="float32", max_model_len=512, cpu_kv_cache_gib=0.25)


def test_openai_client_gets_the_vllm_replicas_selection(served, engine, image):
    import openai

    client = openai.OpenAI(base_url=f"{served['url']}/v1", api_key="unused", max_retries=0, timeout=300)
    (model,) = client.models.list().data
    assert model.id == served["model"] and model.model_extra["engine"] == "vllm"
    resp = client.chat.completions.create(
        model=served["model"],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png_b64(image)}"}},
        ]}],
        n=3,
        max_tokens=MAX_NEW,
        seed=11,
        extra_body={"strategy": "self_select"},
    )
    selection = resp.model_extra["selection"]
    assert resp.model == served["model"] and len(resp.choices) == 1 and selection["n"] == 3
    # what the replica's vLLM engine said is what the same engine says here, seed for seed
    body = {"question": QUESTION, "image": _png_b64(image), "n": 3, "strategy": "self_select",
            "sampling": {"seed": 11}}
    direct = select_in_process(engine, TASK, parse_select(body, ServeConfig(max_new_tokens=MAX_NEW),
                                                          select_max_new_tokens=8))
    assert [c["text"] for c in selection["candidates"]] == [c.text for c in direct.candidates]
    assert selection["selector_text"] == direct.selector_text


def test_concurrent_requests_share_the_engine_and_a_refused_one_fails_alone(served, image):
    def select(body):
        return requests.post(f"{served['url']}/v1/select", json=body, timeout=300)

    bodies = [{"question": QUESTION, "image": _png_b64(image), "n": 2, "strategy": "first", "sampling": {"seed": s}}
              for s in range(3)]
    too_long = {"question": "How many objects? " * 120, "image": _png_b64(image), "n": 2, "strategy": "first"}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(select, bodies + [too_long]))
    alone = [select(b).json() for b in bodies]
    assert [r.status_code for r in together] == [200, 200, 200, 400]
    assert [r.json()["candidates"] for r in together[:3]] == [a["candidates"] for a in alone]
    assert "max_model_len 512" in together[3].text
