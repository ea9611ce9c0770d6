# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the main job end to end
#   make test   set up .venv (with test tools) and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data/ozturk
OUT    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup setup-dev demo test lint clean java

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

java:
	@command -v java >/dev/null 2>&1 || { echo "Java 17 is required (Spark): e.g. apt-get install -y openjdk-17-jre-headless"; exit 2; }

demo: setup java
	$(VENV)/bin/xray-spark demo $(if $(wildcard $(DATA)),--data $(DATA)) --out $(OUT)

test: setup java
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests jobs benchmarks

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache
