# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the main job end to end
#   make test   set up .venv (with test tools) and run the test suite
# While editing: make test-fast (every tier but e2e: no CLI processes, clusters, kernels or browsers)
# Docs: make docs (the site in docs/, built strictly into site/; tests/test_docs.py builds it in the suite),
#       make docs-serve (preview at http://127.0.0.1:8000)
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/ozturk
EXTERNAL ?= ../shared/data/figure1
OUT    ?= runs/demo
PYTEST_ARGS ?=
# Newest pyspark the range in pyproject.toml allows, overlaid on .venv (PYTHONPATH) by tests/test_newest_spark.py;
# the rest of the suite runs on the version pinned in constraints.txt.
NEWEST_SPARK := .spark-newest
PYSPARK_RANGE = $(shell sed -n 's/^[[:space:]]*"\(pyspark[^";]*\)".*/\1/p' pyproject.toml)

.PHONY: setup setup-dev demo test test-fast lint docs docs-serve clean java newest-spark

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# Only pyspark (+ py4j) into a separate folder: TensorFlow etc. stay those of .venv. Re-done when the range changes.
$(NEWEST_SPARK)/.installed: pyproject.toml | $(VENV)/.installed
	@test -n '$(PYSPARK_RANGE)' || { echo "no pyspark requirement found in pyproject.toml"; exit 2; }
	rm -rf $(NEWEST_SPARK)
	$(PY) -m pip install --quiet --upgrade --target $(NEWEST_SPARK) "$(PYSPARK_RANGE)"
	$(PY) -c "import sys; sys.path.insert(0, '$(NEWEST_SPARK)'); import pyspark, py4j; print('newest pyspark for the smoke test:', pyspark.__version__)"
	touch $@

newest-spark: $(NEWEST_SPARK)/.installed

setup: $(VENV)/.installed

java:
	@command -v java >/dev/null 2>&1 || { echo "Java 17 is required (Spark): e.g. apt-get install -y openjdk-17-jre-headless"; exit 2; }

demo: setup java
	$(VENV)/bin/xray-spark demo $(if $(wildcard $(DATA)),--data $(DATA)) \
	  $(if $(wildcard $(EXTERNAL)),--external $(EXTERNAL)) --out $(OUT)

test: setup newest-spark java
	XRAY_SPARK_NEWEST_PYSPARK=$(CURDIR)/$(NEWEST_SPARK) $(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: setup java
	$(PY) -m pytest -q --durations=10 -m "not e2e" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests jobs benchmarks docs_hooks scripts

# NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.0 (informational, not a build warning)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

clean:
	rm -rf $(VENV) $(NEWEST_SPARK) runs build dist site src/*.egg-info .pytest_cache
