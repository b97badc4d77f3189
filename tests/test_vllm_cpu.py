"""The vLLM install check (r3v_ray/engines/vllm_cpu.py, run by the Makefile after `make install-vllm`): which kernel
build of vLLM's CPU build a CPU gets, the refusal where it can run none (main suite, no vllm needed), and the check
itself in .venv-vllm: on this machine, and on an AVX2-only CPU and one without AVX2, emulated by qemu-user; and a
Qwen3.5 engine in bfloat16 on the emulated AVX2-only CPU."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess

import pytest

from r3v_ray.engines.vllm_cpu import cpu_flags, describe, kernel_build, refusal
from conftest import PY, ROOT, subprocess_env

# Flag sets as torch.cpu.get_capabilities() gives them (the features vLLM chooses by), per kind of CPU.
AVX2_ONLY = {"cpu_name": "AMD EPYC (Zen 2)", "avx": True, "avx2": True, "f16c": True, "fma3": True}
AVX512 = AVX2_ONLY | {"cpu_name": "Intel Xeon (Skylake-SP)", "avx512_f": True, "avx512_bw": True}
AVX512_BF16 = AVX512 | {"cpu_name": "AMD EPYC (Zen 4)", "avx512_bf16": True}
NO_AVX2 = {"cpu_name": "AMD Opteron (Piledriver)", "avx": True, "f16c": True, "fma3": True}


@pytest.mark.parametrize("flags, build", [(AVX2_ONLY, "_C_AVX2"), (AVX512, "_C_AVX512"), (AVX512_BF16, "_C"),
                                          (NO_AVX2, None), (AVX2_ONLY | {"f16c": False}, None)],
                         ids=["avx2-only", "avx512", "avx512-bf16", "no-avx2", "no-f16c"])
def test_each_cpu_gets_the_kernel_build_vllm_chooses_for_it(flags, build):
    assert kernel_build(flags) == build


def test_a_cpu_without_avx2_is_refused_in_one_line_naming_what_it_lacks():
    assert refusal(NO_AVX2) == ("vLLM's CPU build needs an x86-64 CPU with at least AVX2 and F16C; this one "
                                "(AMD Opteron (Piledriver)) lacks AVX2")
    assert [refusal(f) for f in (AVX2_ONLY, AVX512, AVX512_BF16)] == [None, None, None]


def test_the_flags_line_shows_what_vllm_chooses_by():
    assert describe(AVX2_ONLY) == ("CPU AMD EPYC (Zen 2): avx2 yes, f16c yes, avx512_f no, avx512_bf16 no, "
                                   "amx_tile no")


def _install_check_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    return re.search(r"^\$\(VLLM_STAMP\):.*?\n\n", makefile, re.S | re.M).group(0)


def test_the_install_check_never_loads_a_kernel_build_by_name():
    """Loading a build by name (issue 26: `import vllm._C` in the Makefile) loads it on any CPU; the check leaves
    the choice to vLLM."""
    recipe = _install_check_recipe()
    assert "$(VPY) -m r3v_ray.engines.vllm_cpu" in recipe
    source = (ROOT / "r3v_ray" / "engines" / "vllm_cpu.py").read_text()
    imported = [alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [f"{node.module}.{alias.name}" for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert not [name for name in imported if re.match(r"vllm\.(_C|_moe_C)", name)], imported
    assert not re.search(r"vllm\._C|import_module|__import__|\bdlopen\b|CDLL", recipe + source)


def _check(*prefix: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, PY, "-m", "r3v_ray.engines.vllm_cpu"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.vllm
def test_the_install_check_passes_here_after_naming_the_cpu_and_its_kernel_build():
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    flags = cpu_flags()
    assert done.stdout.splitlines() == [describe(flags), f"vLLM cpu: kernels loaded by vLLM: {kernel_build(flags)}"]


# qemu-user runs the check on an emulated CPU model of that kind (its TCG has AVX2 but no AVX-512): 5-8 minutes each
# on 2 cores, so they run with `make test-qemu`, not in `make test`. "Haswell,-avx2" is an AVX CPU with F16C and no
# AVX2 (as AMD's Piledriver); qemu's older
# models (IvyBridge, Westmere) stop at an instruction numpy's import runs, before the check starts.
QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (qemu-user) is not installed: it emulates the "
                                                     "AVX2-only CPU and the one without AVX2")


@pytest.mark.vllm
@pytest.mark.qemu
@needs_qemu
def test_on_an_avx2_only_cpu_the_check_passes_with_vllms_avx2_build():
    done = _check(QEMU, "-cpu", "Haswell", timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "CPU Intel Core: avx2 yes, f16c yes, avx512_f no, avx512_bf16 no, amx_tile no",
        "vLLM cpu: kernels loaded by vLLM: _C_AVX2"]


@pytest.mark.vllm
@pytest.mark.qemu
@needs_qemu
def test_on_a_cpu_without_avx2_the_check_fails_with_one_line_naming_it():
    done = _check(QEMU, "-cpu", "Haswell,-avx2", timeout=1500)
    assert done.returncode == 1 and "Illegal instruction" not in done.stderr
    assert done.stdout.splitlines() == ["CPU Intel Core: avx2 no, f16c yes, avx512_f no, avx512_bf16 no, amx_tile no"]
    assert done.stderr.splitlines()[-1] == ("vLLM's CPU build needs an x86-64 CPU with at least AVX2 and F16C; this "
                                            "one (Intel Core) lacks AVX2")


# One greedy generation of a tiny Qwen3.5 vLLM engine in bfloat16 (its CPU dtype), and the kernel build it ran on.
QWEN3_5_GENERATION = """
import json, sys
from PIL import Image
from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
from r3v_ray.engines.vllm_cpu import loaded_builds

engine = create_engine("vllm", sys.argv[1], dtype="bfloat16", max_model_len=512, cpu_kv_cache_gib=0.25)
out = engine.generate([GenerationRequest("What colour is the square?", Image.new("RGB", (64, 64), "red"), "q1")],
                      SamplingParams(max_new_tokens=8))
print("RESULT " + json.dumps({"build": loaded_builds(), "text": out[0].texts[0]}))
"""


def _qwen3_5_generation(model: str, *prefix: str) -> dict:
    done = subprocess.run([*prefix, PY, "-c", QWEN3_5_GENERATION, model], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.vllm
@pytest.mark.qemu
@needs_qemu
def test_on_an_avx2_only_cpu_qwen3_5_runs_in_bfloat16_with_the_greedy_text_of_this_cpu(tmp_path):
    """Qwen3.5 on vLLM's CPU build is bfloat16 only (docs/models.md); without AVX-512 BF16 vLLM takes other paths
    for it (the AVX2 build, its convolution in torch), and the greedy text stays this CPU's."""
    from r3v_ray.models.tiny import TinySpec, build_tiny_model
    from r3v_ray.pipeline.prepare import tokenizer_corpus

    model = str(build_tiny_model(tmp_path / "q35", TinySpec(family="qwen3_5"), corpus=tokenizer_corpus()))
    here = _qwen3_5_generation(model)
    avx2 = _qwen3_5_generation(model, QEMU, "-cpu", "Haswell")
    assert (avx2["build"], here["build"]) == (["_C_AVX2"], [kernel_build(cpu_flags())])
    assert avx2["text"] == here["text"] and here["text"]
