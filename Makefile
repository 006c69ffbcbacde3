# Two commands: `make demo` and `make test`. Everything else is set up on demand.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m omni_jax.demo

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(PY) -m ruff check omni_jax tests bench convert train
	$(PY) -m ruff format --check omni_jax tests bench convert train

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
