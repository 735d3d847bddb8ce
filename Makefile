# rtml-worker: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SERVICES := $(PY) scripts/services.py

.PHONY: help setup services services-down demo test unit lint typecheck format bench soak chaos clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## Create .venv with an editable install and the dev extras (idempotent)

services: $(STAMP) ## Start (or reuse) Kafka and the Schema Registry; prints sourceable env lines
	@$(SERVICES) up

services-down: $(STAMP) ## Stop the services that `make services` started
	@$(SERVICES) down

demo: $(STAMP) ## Run the whole journey end to end against local services
	$(SERVICES) run -- $(PY) -m examples.demo

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Format and autofix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy, strict on worker/
	$(VENV)/bin/mypy

unit: $(STAMP) ## Unit tests only (no services)
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

test: lint typecheck ## Lint, typecheck, and every test against real services (started and stopped if needed)
	$(SERVICES) run -- $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Benchmarks: writes bench/results/latest.json
	$(SERVICES) run -- $(PY) -m bench.run $(SUITES)

soak: $(STAMP) ## 30 minutes at half capacity: loss, latency per 5 minutes, RSS (bench/results/soak.json)
	$(SERVICES) run -- $(PY) -m bench.soak $(SOAK_MINUTES)

chaos: $(STAMP) ## Full chaos profile (hours; a part: CHAOS='-k zombie'): 3 runs each; table in bench/results/chaos.txt
	@mkdir -p bench/results
	set -o pipefail; RTML_CHAOS_PROFILE=full $(SERVICES) run -- $(PY) -m pytest tests/chaos -m chaos $(CHAOS) $(PYTEST_ARGS) 2>&1 | tee bench/results/chaos.log
	$(PY) tests/chaos/ledger.py | tee bench/results/chaos.txt

clean: ## Remove caches (keeps .venv and the downloaded services)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis
