# One source of truth for the commands the README gives and CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run test test-fast lint fmt services

install:
	@bash scripts/install.sh

## Install everything, then compare SCARLET (sliding cache) with DS-FL, both with the
## default codec, on Fashion-MNIST (deploy/examples/first-run.toml; about 3 minutes).
run: install
	$(VENV)/bin/scarlet compare --config deploy/examples/first-run.toml $(ARGS)

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
