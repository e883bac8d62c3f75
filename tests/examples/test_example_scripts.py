"""Every example runs as a script: ``python examples/<name>.py --help`` lists the common options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from example_runner import EXAMPLES

SCRIPTS = ["mnist_torch", "mnist_jax", "lunar_lander_torch", "lunar_lander_jax", "names_torch", "names_jax",
           "multitask_torch", "multitask_jax", "init_experiment"]  # fmt: skip

#: runs each script as ``__main__`` with ``--help``, as ``python examples/<name>.py --help`` would
#: (the script's folder first on ``sys.path``), in one interpreter to import torch and JAX once
HELP_ALL = """
import contextlib, io, json, runpy, sys
examples, names = sys.argv[1], sys.argv[2:]
sys.path.insert(0, examples)
pages = {}
for name in names:
    sys.argv = [f"{examples}/{name}.py", "--help"]
    page = io.StringIO()
    try:
        with contextlib.redirect_stdout(page):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:
        pages[name] = [done.code, page.getvalue()]
print(json.dumps(pages))
"""


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_every_example_script_is_listed_here_and_in_make_examples():
    found = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "quickstart")
    assert found == sorted(SCRIPTS)
    makefile = (EXAMPLES.parent / "Makefile").read_text()
    listed = next(line for line in makefile.splitlines() if line.startswith("EXAMPLES :="))
    assert sorted(listed.split(":=")[1].split()) == sorted(SCRIPTS)


def test_every_script_has_help_with_the_common_options():
    done = subprocess.run([sys.executable, "-c", HELP_ALL, str(EXAMPLES), *SCRIPTS], capture_output=True, text=True,
                          env=_env(), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    pages = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(pages) == sorted(SCRIPTS)
    for name, (code, page) in pages.items():
        assert code == 0, name
        length = "--epochs" if name.startswith("mnist") else "--steps"
        for option in ("--seed", length, "--out", "--quiet"):
            assert option in page, (name, option)


def test_a_script_runs_from_the_command_line():
    done = subprocess.run([sys.executable, str(EXAMPLES / "multitask_torch.py"), "--help"], capture_output=True,
                          text=True, env=_env(), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: multitask_torch.py") and "--tasks" in done.stdout
