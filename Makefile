# Everything installs itself into .venv from the pinned requirements; only
# Python 3.11 and make are needed on the machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt constraints.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo demo-fresh ui cluster test test-unit test-e2e lint bench synap-api docs lock matrix clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .  # this project: engine + Synap provider
	rm -rf plugins/*.egg-info  # a build artifact on the path beside the packages: Airflow would load each plugin twice
	touch $@

install: $(STAMP)  ## create .venv with the pinned dependency set

demo: $(STAMP)  ## run the backfill end to end on the embedded default (run twice: all duplicates)
	$(PY) -m include.demo

demo-fresh: $(STAMP)  ## the demo, after forgetting earlier demo runs
	$(PY) -m include.demo --fresh

ui: $(STAMP)  ## a running local Airflow with demo data, the local Synap API, connections and pools
	$(PY) -m include.local_stack

cluster: $(STAMP)  ## Airflow with the CeleryExecutor, Redis, a PostgreSQL metadata DB and two workers (needs Debian's redis-server)
	$(PY) -m include.local_cluster

test: $(STAMP)  ## every test: unit, DAG integrity, integration, end to end (a real Airflow; browser)
	$(PY) -m pytest

lint: $(STAMP)  ## ruff (with Airflow's AIR rules) and mypy, as configured in pyproject.toml
	$(PY) -m ruff check .
	$(PY) -m mypy

test-unit: $(STAMP)  ## the fast ones
	$(PY) -m pytest tests/unit tests/dags

test-e2e: $(STAMP)  ## only the ones that start a real Airflow
	$(PY) -m pytest tests/e2e

bench: $(STAMP)  ## the vendor recipe vs this backfill, measured (ARGS="--profile cloud-like --turns 10000")
	$(PY) -m include.bench $(ARGS)

synap-api: $(STAMP)  ## serve the local Synap API on 127.0.0.1:8765 (store .local/synap.sqlite3)
	$(PY) -m include.synap_local serve --port 8765

docs: $(STAMP)  ## regenerate docs/reference.md from the models that declare every param and extra
	$(PY) -m include.reference_docs

lock:  ## re-resolve requirements.txt into constraints.txt, then constraints/ for every supported Python × Airflow
	rm -rf .local/lock-venv && $(PYTHON) -m venv .local/lock-venv
	.local/lock-venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	{ echo "# Full resolved dependency set for requirements.txt on Python 3.11 (pip freeze)."; \
	  echo "# Regenerate with: make lock"; .local/lock-venv/bin/pip freeze --disable-pip-version-check; } > constraints.txt
	.local/lock-venv/bin/python -m include.matrix lock

matrix: $(STAMP)  ## the wheel on every supported Python × Airflow: install, provider, DAGs, a backfill (table in test-artifacts/matrix.md)
	$(PY) -m pytest tests/e2e/test_matrix.py

clean:
	rm -rf $(VENV) .local .pytest_cache
