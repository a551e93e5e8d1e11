# The two commands a newcomer needs:  make repro   and   make test
# Both create .venv (if missing) and install the project into it first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands (`python -m pipeline.x`) must find the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test lint format clean server

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The team's tracking server (PostgreSQL + accounts); see README "A shared tracking server".
server: setup
	$(BIN)/python -m pipeline.server $(SERVER_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
