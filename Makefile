# AIOS developer commands. `make help` lists them; docs/embedded-stack.md explains the embedded stack and
# deploy/README.md production.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DATA_DIR := $(or $(AIOS_DATA_DIR),.data)
CHROMIUM := /usr/bin/chromium
PGBOUNCER := /usr/sbin/pgbouncer

.PHONY: help run services test lint clean-data venv requirements requirements-dev chromium pgbouncer docker-compose bench \
	static-packages

help:
	@echo "AIOS — make targets"
	@echo "  make run         set up $(VENV) and start the whole product on http://127.0.0.1:8000 (Ctrl-C stops it)"
	@echo "  make test        run the full test suite against real services; narrow it with PYTEST_ARGS='-k name'"
	@echo "  make services    start only PostgreSQL, Redis and the inference server, to run the app yourself"
	@echo "  make lint        ruff check, ruff format --check, mypy"
	@echo "  make bench       run the benchmarks (bench/README.md); one of them with B=B1 (B1 B2 B3 B6 B7 B8 B9 B10 B11 B12)"
	@echo "  make clean-data  delete $(DATA_DIR)/ (every local database and log) without asking; stops nothing,"
	@echo "                   and refuses while a stack started by make run/test is still using it"

run: requirements static-packages
	@exec $(PY) -m deploy.devstack run

services: requirements
	@exec $(PY) -m deploy.devstack services

# Lint first (ruff and mypy are part of "done"), then the suite. pytest's exit code passes through
# deploy.devstack, which turns 5 (no test ran) into a failure with a message. The figures file is removed
# first so that what is printed comes from this run only.
test: requirements-dev static-packages chromium pgbouncer docker-compose lint
	@rm -f reports/figures.txt
	@status=0; \
	$(PY) -m deploy.devstack test -- $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ -f reports/figures.txt ]; then \
		echo; echo "=== reports/figures.txt ==="; cat reports/figures.txt; \
	fi; \
	exit $$status

# The benchmarks start their own stack (deploy.devstack services on .data/bench, own ports, durable
# PostgreSQL settings), a fresh aios_bench database and their own workers; B picks some (B=B1 or B="B1 B8").
bench: requirements-dev
	@$(PY) -m bench $(B)

# The fault tests alone (tests/faults, reliability-anchors part B) on the embedded test stack. `make test` runs
# them at CI size with the rest of the suite; SIZE=extended runs the larger sizes (N = 10x, slower).
.PHONY: faults
faults: requirements-dev pgbouncer
	@rm -f reports/figures.txt
	@status=0; \
	AIOS_FAULTS_SIZE=$(or $(SIZE),ci) $(PY) -m deploy.devstack test -- $(PY) -m pytest tests/faults $(PYTEST_ARGS) \
		|| status=$$?; \
	if [ -f reports/figures.txt ]; then \
		echo; echo "=== reports/figures.txt ==="; cat reports/figures.txt; \
	fi; \
	exit $$status

# All three run even when one fails, so one pass shows every problem.
lint: requirements-dev
	@status=0; \
	echo "ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "ruff format --check ."; $(VENV)/bin/ruff format --check . || status=1; \
	echo "mypy apps devserver deploy workers"; $(VENV)/bin/mypy apps devserver deploy workers || status=1; \
	exit $$status

clean-data:
	@for lock in "$(DATA_DIR)/devstack.lock" "$(DATA_DIR)/test/devstack.lock"; do \
		if [ -f "$$lock" ] && command -v flock >/dev/null && ! flock -n "$$lock" true; then \
			echo "A stack is still running on $(DATA_DIR) (it holds $$lock): stop it first (Ctrl-C in its terminal)."; \
			exit 1; \
		fi; \
	done
	@if [ -e "$(DATA_DIR)" ] && [ ! -f "$(DATA_DIR)/.aios-devstack" ]; then \
		echo "$(DATA_DIR) was not made by deploy.devstack (it has no .aios-devstack file): not deleting it."; \
		exit 1; \
	fi
	rm -rf -- "$(DATA_DIR)"

# A venv is (re)made when it is missing, broken (an interrupted creation leaves python without pip) or too old.
venv:
	@if ! $(PY) -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
			echo "AIOS needs Python 3.11 or newer; '$(PYTHON)' is not. Run: make $(MAKECMDGOALS) PYTHON=python3.11"; \
			exit 1; \
		fi; \
		rm -rf $(VENV); \
		echo "Creating $(VENV) with $$($(PYTHON) --version) ..."; \
		if ! $(PYTHON) -m venv $(VENV); then \
			rm -rf $(VENV); \
			echo "Could not create $(VENV). On Debian or Ubuntu: apt-get install python3-venv"; \
			exit 1; \
		fi; \
	fi

# $(call install,<requirements file>,<stamp file>,<files whose content decides>)
# pip runs only when the checksum of those files differs from the one recorded after the last successful install,
# so a second `make run` skips straight to starting the stack.
define install
	@sum=$$(cat $(3) | $(PY) -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'); \
	if [ "$$sum" != "$$(cat $(2) 2>/dev/null)" ]; then \
		echo "Installing $(1) into $(VENV) ..."; \
		$(PY) -m pip install --disable-pip-version-check -r $(1) && echo "$$sum" > $(2); \
	fi
endef

requirements: venv
	$(call install,requirements.txt,$(VENV)/.requirements.stamp,requirements.txt)

# requirements-dev.txt includes requirements.txt, so its stamp covers both files.
requirements-dev: venv
	$(call install,requirements-dev.txt,$(VENV)/.requirements-dev.stamp,requirements.txt requirements-dev.txt)

# Front-end packages (package.json, locked by package-lock.json) go into node_modules/ with `npm ci`, again only
# when the lock file changed. Without npm the builder works without drag and drop (its move buttons remain).
# The checksum comes from the venv's Python, not sha256sum, which macOS lacks.
static-packages: venv
	@if command -v npm >/dev/null; then \
		sum=$$(cat package-lock.json | $(PY) -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'); \
		if [ "$$sum" != "$$(cat node_modules/.lock.stamp 2>/dev/null)" ]; then \
			echo "Installing front-end packages (npm ci) ..."; \
			npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && echo "$$sum" > node_modules/.lock.stamp; \
		fi; \
	else \
		echo "note: npm is not installed; the builder works without drag and drop (install Node.js for it)."; \
	fi

# The scale-out and pooling tests put PgBouncer (transaction mode) between the workers and PostgreSQL, as a
# production deployment does; they fail with a message naming the package when it is missing.
pgbouncer:
	@if [ ! -x $(PGBOUNCER) ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing PgBouncer from Debian's packages for the scale-out tests ..."; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -q && apt-get install -y -q --no-install-recommends pgbouncer; \
		else \
			echo "warning: $(PGBOUNCER) is missing and cannot be installed here (needs root and apt-get);"; \
			echo "         install Debian's pgbouncer package for the scale-out tests."; \
		fi; \
	fi

# The browser tests drive Debian's Chromium: Playwright's own browser download is not reachable from CI.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing Chromium from Debian's packages for the browser tests ..."; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -q && apt-get install -y -q chromium; \
		else \
			echo "warning: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get);"; \
			echo "         install Debian's chromium package for the browser tests."; \
		fi; \
	fi

# tests/deploy validates deploy/compose.yaml with `docker-compose config` (it needs no Docker daemon). Debian's
# docker-compose package is the compose file checker installable from the registries here; the test fails, naming
# the package, where it is missing.
docker-compose:
	@if ! command -v docker-compose >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing docker-compose from Debian's packages for the deployment tests ..."; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -q && apt-get install -y -q --no-install-recommends docker-compose; \
		else \
			echo "warning: docker-compose is missing and cannot be installed here (needs root and apt-get);"; \
			echo "         install the docker-compose package for the deployment tests."; \
		fi; \
	fi
