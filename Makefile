# classiflow: `make run` runs the pipeline, `make test` runs the tests (both install first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
PREFECT_API ?= http://127.0.0.1:4200/api

export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Every stage is a fresh process importing torch, MLflow and Prefect: let Python cache bytecode
# (on first import, which is why pip skips compiling all of site-packages: --no-compile).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install run test test-fast lint plots ui prefect-server prefect-deploy prefect-worker prefect-smoke benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml docker/requirements-serve.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]' -c docker/requirements-serve.txt
	touch $(STAMP)

# make run SET="data.source=path/to/archive.tar.gz train.epochs=2" runs `dvc exp run -S ...`;
# make run RECIPE=fast applies a named recipe (recipes/fast.yaml) the same way.
run: install
ifneq ($(SET)$(RECIPE),)
	set -e; recipe="$(if $(RECIPE),$$(classiflow recipe $(RECIPE)))"; dvc exp run $$recipe $(foreach s,$(SET),-S '$(s)')
else
	dvc repro
endif

# One pytest worker per core, each pinned to its core (tests/conftest.py); a test file runs whole on one
# worker (its module fixtures once), the longest files first. WORKERS=0 runs everything in this process.
WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# Three tiers (pyproject.toml's markers): unit (unmarked), integration, e2e; `make test` runs them all.
test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m unit

lint: install
	$(BIN)/ruff check classiflow tasks flows tests benchmarks

ui: install
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port 5000

prefect-server: install
	prefect server start --host 127.0.0.1

prefect-deploy: install
	PREFECT_API_URL=$(PREFECT_API) prefect work-pool create local --type process --overwrite
	PREFECT_API_URL=$(PREFECT_API) prefect --no-prompt deploy --all

prefect-worker: install
	PREFECT_API_URL=$(PREFECT_API) prefect worker start --pool local

prefect-smoke: install
	bash scripts/prefect_smoke.sh

plots: install
	bash scripts/plots.sh

benchmark: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf data models metrics reports records runs dvc.lock
