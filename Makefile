# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv with the
# pinned stack on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-fast bench clean

$(VENV)/.installed: setup.cfg requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-dev.txt -e '.[all,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(PY) benchmarks/torch_mlp_step.py
	$(PY) benchmarks/jax_mlp_step.py
	$(PY) benchmarks/torch_dynamic_step.py

clean:
	rm -rf $(VENV) build *.egg-info
