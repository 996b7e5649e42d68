# Two entry points: `make test` and `make demo`. Both build .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test lint install demo clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev,avs]" $(TORCH_PIN)
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m videoadapt.recipes.demo --out demo_out

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo_out
