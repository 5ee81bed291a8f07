# Two entry points that work on a fresh machine with only python3: both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: scenarios test lint bench coverage clean chromium redis nftables

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job: real faults into a real pool, a verdict and figures per scenario, the report
# in reports/latest/ (JSON, Markdown, HTML), and the gate. Make exits 2 for any failed recipe, so
# the gate's own code (10, 11, 12; 1: a test outside the gate failed) is printed, not returned.
SCENARIOS := $(BIN)/python -m pytest scenarios/ -p no:cacheprovider -rA --chaos-gate \
	--junitxml=reports/scenarios-junit.xml
scenarios: $(STAMP) redis nftables
	@echo "$(SCENARIOS)"
	@$(SCENARIOS) || { status=$$?; echo "make scenarios: pytest --chaos-gate exited $$status" \
		"(10 a weakness found, 11 a harness or environment error, 12 bad configuration," \
		"1 a test outside the gate failed; reports/latest/report.html says why); make exits 2." \
		"For the code itself: $(BIN)/python -m pytest scenarios/ --chaos-gate"; exit $$status; }

# The whole test suite (tests/ and scenarios/), lint and format check included.
test: lint chromium redis nftables
	$(BIN)/python -m pytest -p no:cacheprovider --junitxml=reports/junit.xml

# Debian's headless Chromium, for the test that looks at report.html as a person would.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing (apt-get install chromium); its report test will be skipped"; \
	fi

# Debian's redis-server, for the Celery and RQ targets: each test starts its own on a free
# loopback port (nothing is started here).
redis:
	@command -v redis-server >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	else \
		echo "redis-server is missing (apt-get install redis-server); the engines' scenarios will be skipped"; \
	fi

# iproute2 and nftables, for the test hosts (network namespaces) and the partitions between them
# (scenarios/test_network.py): the tests make and remove every namespace themselves.
nftables:
	@{ command -v nft && command -v ip; } >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2; \
	else \
		echo "nft or ip is missing (apt-get install nftables iproute2); the network scenarios will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check --no-cache system chaos tests scenarios bench conftest.py
	$(BIN)/ruff format --check --no-cache system chaos tests scenarios bench conftest.py
	$(BIN)/mypy --no-incremental  # [tool.mypy]: system/ and chaos/, every function annotated

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/failpoints.py

# The whole suite under coverage (not part of make test: it runs about a third slower). Every
# process writes its own data file ([tool.coverage.run] parallel), combined at the end; a worker
# killed with SIGKILL writes none, so the figure is a floor.
coverage: $(STAMP) chromium redis nftables
	rm -f .coverage .coverage.*
	$(BIN)/python -m coverage run -m pytest -p no:cacheprovider -q
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report --sort=cover

clean:
	rm -rf $(VENV) build *.egg-info
