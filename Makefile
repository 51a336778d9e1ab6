# HelixFlow: `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python compiles llama.cpp from source on first install (several minutes on 2 cores).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# It is built once per machine and CPU flags into a wheel directory outside the repo, so a
# clean checkout installs in seconds. The flags leave AMX out (scripts/ggml_cpu_flags.sh says
# why); pip's own wheel cache cannot be used for that, as it ignores CMAKE_ARGS.
LLAMA_VERSION    := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)
LLAMA_CMAKE_ARGS ?= $(shell scripts/ggml_cpu_flags.sh)
LLAMA_WHEELS     ?= $(HOME)/.cache/helixflow/llama-wheels/$(shell echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-12)
PIP_INSTALL       = $(BIN)/pip install --quiet --find-links $(LLAMA_WHEELS)

.PHONY: serve test lint format typecheck check bench bench-gateway llama-server clean help

help:
	@echo "make serve       create .venv, install, start the server with the bundled model"
	@echo "make test        create .venv, install dev extras, run the whole test suite"
	@echo "make check       ruff + mypy"
	@echo "make bench       run benchmarks/engine_throughput.py against the peers"
	@echo "make bench-gateway  run benchmarks/gateway_overhead.py (direct, HelixFlow, LiteLLM)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_VERSION) (llama.cpp; several minutes, once per machine)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
		--wheel-dir $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	@touch $@

# The wheel is (re)installed first, so a venv made before a change of flags picks it up.
LLAMA_WHEEL_INSTALL = $(BIN)/pip install --quiet --no-deps --force-reinstall \
	$(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl

$(VENV)/.installed: pyproject.toml $(LLAMA_WHEELS)/.built | $(BIN)/python
	$(LLAMA_WHEEL_INSTALL)
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(LLAMA_WHEELS)/.built | $(BIN)/python
	$(LLAMA_WHEEL_INSTALL)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/helixflow serve $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

check: lint typecheck

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed

bench: $(VENV)/.installed-bench
	benchmarks/build_llama_server.sh
	$(BIN)/python benchmarks/engine_throughput.py $(ARGS)

bench-gateway: $(VENV)/.installed
	$(BIN)/python benchmarks/gateway_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
