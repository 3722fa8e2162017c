# One source of truth for the commands the README gives and CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run test test-fast lint fmt services

install:
	@bash scripts/install.sh

## Install everything, then run the default federation (SCARLET on Fashion-MNIST).
run: install
	$(VENV)/bin/scarlet simulate $(ARGS)

## Everything a user must trust: lint, unit, contract, integration and system tests.
test: install services lint
	$(PY) -m pytest -q

## Unit tests only, for the edit-test loop.
test-fast:
	$(PY) -m pytest -q tests/unit

services:
	@bash scripts/ensure_services.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
