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

# The main job: real faults into a real pool, a verdict and figures per scenario.
scenarios: $(STAMP)
	$(BIN)/python -m pytest scenarios/ -p no:cacheprovider -rA --junitxml=reports/scenarios-junit.xml

# The whole test suite (tests/ and scenarios/), lint and format check included.
test: lint
	$(BIN)/python -m pytest -p no:cacheprovider --junitxml=reports/junit.xml

lint: $(STAMP)
	$(BIN)/ruff check --no-cache system chaos tests scenarios bench conftest.py
	$(BIN)/ruff format --check --no-cache system chaos tests scenarios bench conftest.py

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/failpoints.py

clean:
	rm -rf $(VENV) build *.egg-info
