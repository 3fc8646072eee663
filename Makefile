# pgx — the two commands that matter: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pgx-installed
ROWS   ?= 1000000

.PHONY: install demo test lint type pytest bench chart manifests image-test clean

$(STAMP): pyproject.toml examples/pgx-example-linecount/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' -e examples/pgx-example-linecount
	touch $(STAMP)

install: $(STAMP)            ## virtualenv with pgx, its test tools and the example plugin

demo: install                ## the embedded default: sample data → local lake → whole pipeline
	$(BIN)/pgx demo --dir ./demo-lake

test: lint type pytest       ## everything CI runs

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

type: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

bench: install               ## end-to-end benchmark, e.g. make bench ROWS=2000000
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py --rows $(ROWS)

image-test:                  ## build the image with podman (local Debian base) and run pgx in it read-only; ~7 min, not in `make test`
	bash scripts/image-test.sh

clean:
	rm -rf $(VENV) demo-lake .pytest_cache .mypy_cache .ruff_cache

chart: install               ## render, lint and validate the Helm chart and manifests
	$(BIN)/pytest -m chart -q

manifests: install           ## regenerate manifests/ from the chart and pgx render
	$(BIN)/python scripts/gen_manifests.py
