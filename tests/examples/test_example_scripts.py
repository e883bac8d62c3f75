"""Every example runs as a script: ``python examples/<name>.py --help`` lists the common options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from example_runner import EXAMPLES

SCRIPTS = ["mnist_torch", "mnist_jax", "lunar_lander_torch", "lunar_lander_jax", "names_torch", "names_jax",
           "multitask_torch", "multitask_jax"]  # fmt: skip


def test_every_example_script_is_listed_here_and_in_make_examples():
    found = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "quickstart")
    assert found == sorted(SCRIPTS)
    makefile = (EXAMPLES.parent / "Makefile").read_text()
    listed = next(line for line in makefile.splitlines() if line.startswith("EXAMPLES :="))
    assert sorted(listed.split(":=")[1].split()) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--help"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=EXAMPLES.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    length = "--epochs" if name.startswith("mnist") else "--steps"
    for option in ("--seed", length, "--out", "--quiet"):
        assert option in done.stdout
