# Every target sets up what it needs: a fresh clone needs nothing but python3, npm and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := medplum_local/node_modules/.installed
# Debian's Chromium for the browser test (Playwright drives the system browser; it never downloads one).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium-installed

.PHONY: setup test test-fast demo dev medplum bench test-stock lint clean history soak element profile report workers

setup: $(VENV_STAMP) $(NODE_STAMP) $(CHROMIUM_STAMP)

$(VENV_STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,celery]'
	touch $@

$(NODE_STAMP): medplum_local/package.json medplum_local/package-lock.json
	cd medplum_local && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CHROMIUM_STAMP):
	@if [ -x $(CHROMIUM) ]; then echo "chromium: $$($(CHROMIUM) --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "the browser test needs Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; \
	fi
	@mkdir -p $(@D) && touch $@

# Everything CI runs: the guards (make lint), then every test. A pytest session runs one profile: the platform's
# tests on the fixture profile, then seed_ehr's own (migration_assets_tests/conftest.py, SEED_EHR_TESTS).
test: setup lint
	$(VENV)/bin/pytest
	MIGRATION_PROFILE=seed_ehr $(VENV)/bin/pytest

# The unit tier: no server, under a minute.
test-fast: $(VENV_STAMP)
	$(VENV)/bin/pytest -m "not integration"
	MIGRATION_PROFILE=seed_ehr $(VENV)/bin/pytest -m "not integration"

# The stock-project tier: the local server as Medplum creates a project (quota on, transaction-bundles off).
test-stock: setup
	$(VENV)/bin/pytest migration_assets_tests/test_stock_project.py

# make demo [V=1]: V=1 prints Dagster's own log lines and warnings too.
demo: setup
	$(PY) -m migration_assets.commands.demo $(if $(V),--verbose)

dev: setup
	$(PY) -m migration_assets.commands.dev

# Celery workers for the code location (runs launched with DAGSTER_EXECUTOR=celery): make workers [WORKERS=2]
# (broker CELERY_BROKER_URL, default RabbitMQ on 127.0.0.1:5672; queue CELERY_QUEUE; instance DAGSTER_HOME)
WORKERS ?= 2
workers: setup
	$(PY) -m migration_assets.commands.workers --workers $(WORKERS)

medplum: $(NODE_STAMP)
	medplum_local/node_modules/.bin/node medplum_local/server.mjs

# The cutover report of the latest run: one HTML page under .demo/reports/
report: $(VENV_STAMP)
	$(PY) -m migration_assets.commands.report

# What happened to one source key: make history KEY=P0123 [ELEMENT=patients]
history: $(VENV_STAMP)
	$(PY) -m migration_assets.ledger.history "$(KEY)" $(if $(ELEMENT),--element "$(ELEMENT)")

# Throughput benchmark: make bench [BENCH_PATIENTS=2000] [BENCH_STAGES=transform,ceiling,...]
BENCH_PATIENTS ?= 2000
bench: setup
	BENCH_PATIENTS=$(BENCH_PATIENTS) $(PY) -m migration_assets.commands.bench

# Soak: the whole migration of SOAK_PATIENTS patients against the local server with the FHIR quota on
# (docs/soak.md): make soak [SOAK_PATIENTS=50000] [SOAK_ARGS="--quota 7500000 --window 60"]
SOAK_PATIENTS ?= 50000
soak: setup
	$(PY) -m migration_assets.commands.soak --patients $(SOAK_PATIENTS) $(SOAK_ARGS)

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check migration_assets migration_assets_tests
	$(VENV)/bin/ruff format --check migration_assets migration_assets_tests
	$(VENV)/bin/mypy migration_assets
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) medplum_local/node_modules .dagster_home .demo

# Scaffolds: a data element that loads and passes its checks before it is edited, and a new profile folder.
#   make element NAME=lab_orders [PROFILE=seed_ehr|/path/to/profile]     make profile DIR=/path/to/my_clinic
element: $(VENV_STAMP)
	$(PY) -m migration_assets.commands.scaffold element "$(NAME)" $(if $(PROFILE),--profile "$(PROFILE)")

profile: $(VENV_STAMP)
	$(PY) -m migration_assets.commands.scaffold profile "$(DIR)"
