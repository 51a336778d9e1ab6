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

.PHONY: serve test ui system-tools lint format typecheck check bench bench-gateway llama-server clean help

help:
	@echo "make serve       create .venv, install, start the server with the bundled model"
	@echo "make test        create .venv, install dev extras, run the whole test suite"
	@echo "make ui          build the dashboard (ui/, Vite + TypeScript) into the package"
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

# The dashboard: `npm ci` when the lock file changes, a build when the sources change.
UI_DIR     := ui
UI_OUT     := src/helixflow/api/ui/static
UI_SOURCES := $(shell find $(UI_DIR)/src $(UI_DIR)/public -type f 2>/dev/null) \
	$(addprefix $(UI_DIR)/,index.html package.json vite.config.ts tsconfig.json tsconfig.node.json)

$(UI_DIR)/node_modules/.installed: $(UI_DIR)/package.json $(UI_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make ui needs Node.js >= 20.19 and npm"; exit 1; }
	cd $(UI_DIR) && npm ci --no-audit --no-fund
	@touch $@

$(UI_OUT)/index.html: $(UI_SOURCES) $(UI_DIR)/node_modules/.installed
	cd $(UI_DIR) && npm run build
	@touch $@

ui:
	@if command -v npm >/dev/null; then \
		$(MAKE) --no-print-directory $(UI_OUT)/index.html; \
	else \
		echo "the dashboard is not built: it needs Node.js >= 20.19 and npm (the API works without it)"; \
	fi

# System programs the tests drive: Debian's Chromium (dashboard tests, through Playwright)
# and promtool (the alert rules in deploy/). Installed when missing and running as root;
# otherwise their tests skip, unless HELIXFLOW_REQUIRE_BROWSER / _PROMTOOL say they must run.
system-tools:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq$$missing >/dev/null; \
		else \
			echo "missing:$$missing (apt-get install them as root; their tests skip)"; \
		fi; \
	fi

serve: $(VENV)/.installed ui
	$(BIN)/helixflow serve $(ARGS)

test: $(VENV)/.installed-dev ui system-tools
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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(UI_DIR)/node_modules $(UI_OUT)
