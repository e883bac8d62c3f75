"""The init experiment (``examples/init_experiment.py``) runs, warm-starts where it says, and prints its table."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "init_experiment.py"


def _load():
    spec = importlib.util.spec_from_file_location("hypernn_example_init_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


experiment = _load()


def test_short_run_prints_a_markdown_table_of_every_model():
    out = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            results = experiment.main(["--steps", "15", "--repeats", "1", "--pretrain-steps", "40", "--rank", "2"])
    finally:
        torch.set_num_threads(threads)
    names = list(results)
    assert len(names) == 5 and names[0] == "plain CNN"
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("| model (15 steps, 1 seeds) | trainable params |") and lines[1].startswith("|---|")
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == names
    plain, default, hyperfan, warm, low_rank = (results[n][0] for n in names)
    # warm starts begin at the pretrained CNN's accuracy, far above chance; fresh models near chance
    assert warm.start_accuracy == low_rank.start_accuracy > 0.5
    assert max(plain.start_accuracy, default.start_accuracy, hyperfan.start_accuracy) < 0.3
    assert default.params == hyperfan.params == warm.params < plain.params / 10
    assert low_rank.params < warm.params
    assert f"{warm.accuracy:.2%}" in out.getvalue()


def test_help_exits_zero():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SCRIPT.parents[1]))
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--steps", "--seed", "--repeats", "--pretrain-steps", "--rank"):
        assert option in done.stdout
