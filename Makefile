# Two commands for a fresh checkout; each builds .venv on first use.
#   make run   - the main job: compare methods on MNIST-1D at density 0.1, print a table
#   make test  - the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_OUT ?= runs/make-run

.PHONY: run test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/regrow compare --config configs/quick-mnist1d.yaml --out $(RUN_OUT) --overwrite

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
