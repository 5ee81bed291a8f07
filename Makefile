# Two entry points that work on a fresh machine with only python3: both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: scenarios test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job. Until the scenarios land (issue G1) it runs the demo under repeated kill -9 and
# verifies that nothing was lost, duplicated or reordered.
scenarios: $(STAMP)
	$(BIN)/python -m pytest scenarios/ -p no:cacheprovider

# The whole test suite, lint included.
test: $(STAMP)
	$(BIN)/ruff check system chaos tests scenarios bench
	$(BIN)/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check system chaos tests scenarios bench
	$(BIN)/ruff format --check system chaos tests scenarios bench

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
