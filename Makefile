# One command to run the pipeline, one to test it. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= local
ARGS   ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR := cpu

.PHONY: venv run test lint typecheck unit integration browser bench-trl docs clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so pip takes the CPU build instead of a multi-GB CUDA one
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

run: venv
	$(BIN)/emprl run --preset $(PRESET) $(ARGS)

lint: venv
	$(BIN)/ruff check pipeline actors jobs tests benchmarks
	$(BIN)/ruff format --check pipeline actors jobs tests benchmarks

typecheck: venv
	$(BIN)/mypy pipeline actors jobs

unit: venv
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests/unit -q

integration: venv
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests/integration -q

# ruff first (seconds); mypy then runs beside pytest, and reports after it. pytest runs two workers, each
# module on one of them (its fixtures and clusters stay whole; the multi-node modules one after the other),
# modules with slow tests first: the Ray jobs and node start-ups of one leave cores idle that the other
# uses (tests/conftest.py). The ten slowest tests close pytest's summary. Every part must pass.
test: lint
	$(BIN)/mypy pipeline actors jobs > $(VENV)/typecheck.log 2>&1 & typecheck=$$!; \
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q --durations=10 -n 2 --dist loadfile; tests=$$?; \
	wait $$typecheck; typed=$$?; echo "$(BIN)/mypy pipeline actors jobs"; cat $(VENV)/typecheck.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

# PPO side by side with the paper's trl 0.9.6 step (creates benchmarks/trl_baseline/.venv once)
bench-trl: venv
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ppo_vs_trl.py $(ARGS)

# The configuration reference, generated from the schema's docstrings (tests/unit/test_docs.py checks it)
docs: venv
	$(BIN)/emprl config --markdown > docs/configuration.md

# Debian's Chromium + ChromeDriver for the chat page's browser test (root; CI runs it)
browser:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
