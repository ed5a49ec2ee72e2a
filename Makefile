# Quick start: `make demo` (the embedded default) and `make test` (everything the tests need, then the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup setup-test setup-bench lint

demo: setup
	$(BIN)/kvplan demo

test: setup-test
	$(BIN)/python -m pytest -q

setup:
	bash scripts/setup.sh base

setup-test:
	bash scripts/setup.sh test

setup-bench:
	bash scripts/setup-bench.sh

lint:
	$(BIN)/ruff check kvplan tests bench
	$(BIN)/ruff format --check kvplan tests bench
	$(BIN)/mypy
