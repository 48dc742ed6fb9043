# ServiceLoop - every command a user needs. `make help` lists them.
# Each target sets up what it needs on first use (virtualenv, install, embedded warehouse).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export XDG_RUNTIME_DIR ?= /tmp

.DEFAULT_GOAL := help
.PHONY: help install browser run test lint up down clean warehouse-start warehouse-stop format bench evaluate-detection evidently-ui

help: ## list the commands
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (done by every target on first use)

# Debian's Chromium and ChromeDriver drive the Reviews page's browser test; the CJK font lets
# charts and pages draw Chinese labels. Installed once, as root, when the browser is missing.
BROWSER := /usr/bin/chromium
BROWSER_PACKAGES := chromium chromium-driver fonts-noto-cjk
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES)

$(BROWSER):
	@echo "installing $(BROWSER_PACKAGES) (Debian packages) ..."
	@$(APT_INSTALL) >/dev/null 2>&1 || { apt-get update -qq >/dev/null && $(APT_INSTALL) >/dev/null; } \
		|| { echo "could not install $(BROWSER_PACKAGES) with apt-get (needs root and Debian's registry)" >&2; exit 1; }

browser: $(BROWSER) ## headless Chromium, ChromeDriver and a CJK font (Debian packages) for the browser test

run: $(STAMP) ## the main job: simulate 120 days, run ingest, dbt and drift through Airflow, print a summary
	$(BIN)/serviceloop run

test: $(STAMP) lint browser ## lint, then the whole test suite (what CI runs)
	$(BIN)/pytest

bench: $(STAMP) ## each stage beside its bare anchor at 10k, 100k, 1M tickets -> bench/results.json (1M: 20-30 min)
	$(BIN)/serviceloop bench

evaluate-detection: $(STAMP) ## drift monitor vs a z-score baseline on simulated scenarios -> bench/detection.json (~10 min)
	$(BIN)/serviceloop evaluate-detection

evidently-ui: $(STAMP) ## the Evidently UI on 127.0.0.1:8000: each segment's drift metrics over time (after a run)
	$(BIN)/serviceloop evidently-ui

lint: $(STAMP) ## ruff (with Airflow's AIR rules) and sqlfluff
	$(BIN)/ruff check plugins dags tests bench
	$(BIN)/ruff format --check plugins dags tests bench
	$(BIN)/sqlfluff lint dbt_project/models dbt_project/macros

format: $(STAMP) ## apply ruff's formatting and fixes
	$(BIN)/ruff format plugins dags tests bench
	$(BIN)/ruff check --fix plugins dags tests bench

up: $(STAMP) ## start the Airflow UI on 127.0.0.1:8080 with the pipeline's DAGs (prints the login)
	$(BIN)/serviceloop up

down: $(STAMP) ## stop the Airflow UI and the embedded warehouse
	$(BIN)/serviceloop down --warehouse

warehouse-start: $(STAMP) ## start the embedded PostgreSQL
	$(BIN)/serviceloop warehouse start

warehouse-stop: $(STAMP) ## stop the embedded PostgreSQL
	$(BIN)/serviceloop warehouse stop

clean: ## stop everything and remove the state folder (.serviceloop/)
	-@test -x $(BIN)/serviceloop && $(BIN)/serviceloop down --warehouse >/dev/null 2>&1
	rm -rf .serviceloop dbt_project/target dbt_project/logs
