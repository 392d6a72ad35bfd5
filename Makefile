# The two commands a newcomer needs: `make test` and `make demo`.
# Both create .venv on first use and install what they need into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: test lint demo bench fuzz clean

# setuptools tells every editable install of a flat layout to "be careful with
# folders named like the package" (an InformationOnly warning, nothing to act on).
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The replication tests run a real redis-server: Debian's package, installed when missing.
test: lint
	command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }; }; } || { echo "make test needs redis-server (apt-get install redis-server)"; exit 1; }
	$(BIN)/pytest

# The fuzz targets (tests/fuzz, and the store file in tests/mmapstore) for long:
# HFT_FUZZ_EXAMPLES inputs each, about 50 minutes at the default on 2 cores (47.5 for
# the 21 targets at stop 34; generating the inputs is most of it).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	HFT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider \
		tests/fuzz tests/mmapstore/test_crafted_files.py --hypothesis-show-statistics

demo: $(STAMP)
	$(BIN)/gateway demo

# The whole suite, under 10 minutes on 2 cores; writes docs/benchmarks.md and its plots.
# Redis is installed as a user would (Debian's package) when it is missing and we are root.
bench: $(STAMP)
	$(PIP) install --quiet -e '.[test,bench]'
	command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq redis-server >/dev/null; } || echo "no redis-server: the Redis rows are skipped"
	$(BIN)/python tools/bench_suite.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
