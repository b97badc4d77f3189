# Two user-facing commands: `make demo` and `make test`. Each creates .venv and installs on first use;
# a second run skips what is already done (the install stamp, the built model and data, finished stages).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install clean reproduce reproduce-quick

$(STAMP): pyproject.toml requirements/cpu-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first from the pinned CPU build, so nothing later can pull a CUDA torch.
	$(PY) -m pip install -q -c requirements/cpu-constraints.txt torch
	$(PY) -m pip install -q -c requirements/cpu-constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m r3v_ray.cli demo --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs

# The paper's table in miniature on the built-in task (3 seeds; see docs/reproduction.md): STaR, R3V and its two
# ablations, the test-time scaling curve (Select@2..6, Majority@1..10) and the temperature sweep.
REPRODUCE := $(PY) -m r3v_ray.cli reproduce --config configs/reproduce.yaml --eval-temperatures 0.3 0.5 0.7
reproduce: $(STAMP)
	$(REPRODUCE) --seeds 0 1 2

# The same for seed 0 alone (its runs are shared with `make reproduce`), into runs/repro-reproduction-quick/.
reproduce-quick: $(STAMP)
	$(REPRODUCE) --quick
