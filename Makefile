# modelport — the two commands: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The full development install: server + converter + test tools.
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test protos check-protos serve clean

help:
	@echo "make demo    train the seed models, convert, serve and call them (sets up .venv)"
	@echo "make test    run the whole test suite (sets up .venv)"
	@echo "make protos  regenerate client/_proto from protos/*.proto"

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	@echo ">> installing modelport[server,convert,dev] into $(VENV) (first run downloads TensorFlow; a few minutes)"
	$(PIP) install --quiet --progress-bar off -e '.[server,convert,dev]'
	@touch $(STAMP)

venv: $(STAMP)

protos: $(STAMP)
	$(PY) protos/generate.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) models .demo .pytest_cache
