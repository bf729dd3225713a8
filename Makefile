# modelport — the two commands: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The full development install: server + converter + test tools.
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv demo test protos prometheus redis lock clean

help:
	@echo "make demo    train the seed models, convert, serve and call them (sets up .venv)"
	@echo "make test    lint (ruff) and run the whole test suite (sets up .venv)"
	@echo "make protos  regenerate protos/generated from protos/*.proto"

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

# The metrics test scrapes with a real Prometheus (Debian's package).
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo ">> installing Debian's prometheus (used by tests/server/test_prometheus.py)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends prometheus >/dev/null; }

# The feedback-store tests run a real redis-server (Debian's package) on a free port.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo ">> installing Debian's redis-server (used by the feedback-store tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends redis-server >/dev/null; }

# Lint first (seconds), then every test; `.venv/bin/pytest -m "not slow"` is the quick loop.
test: $(STAMP) prometheus redis
	$(VENV)/bin/ruff check --no-cache .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py

# Hash-pinned dependency locks the images install from (pip-compile from pip-tools, in the dev extra).
# The server images also carry the redis extra (the feedback store's client); the GPU lock adds
# k8s/images/requirements-gpu.in (what the image's Python 3.11.0 needs beyond a newer 3.11's pins).
LOCKS := server gpu convert
LOCK_EXTRAS_server := server redis
LOCK_EXTRAS_gpu := gpu redis
LOCK_EXTRAS_convert := convert
lock: $(STAMP)
	@$(foreach lock,$(LOCKS),echo ">> k8s/images/requirements-$(lock).lock" && \
	  $(VENV)/bin/pip-compile --quiet $(foreach extra,$(LOCK_EXTRAS_$(lock)),--extra $(extra)) --generate-hashes \
	    --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	    --output-file k8s/images/requirements-$(lock).lock pyproject.toml $(wildcard k8s/images/requirements-$(lock).in) && ) true

clean:
	rm -rf $(VENV) models .demo .pytest_cache

# Build the CPU server image with podman on a locally made base, serve a model from a volume and
# call it with the client (needs root and Debian's podman/runc/debootstrap; not part of `make test`).
.PHONY: image-test
image-test: $(STAMP)
	PY=$(PY) bash k8s/images/image_test.sh
