# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the main job end to end
#   make test   set up .venv (with test tools) and run the test suite
# While editing: make test-fast (every tier but e2e: no CLI processes, clusters, kernels or browsers)
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

.PHONY: setup setup-dev demo test test-fast lint clean java newest-spark

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
	$(VENV)/bin/ruff check src tests jobs benchmarks

clean:
	rm -rf $(VENV) $(NEWEST_SPARK) runs build dist src/*.egg-info .pytest_cache
