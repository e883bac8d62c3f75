"""The Lunar Lander examples (``examples/lunar_lander_{torch,jax}.py``): REINFORCE with a
hypernetwork policy raises the return within a few updates, and writes its pictures.

Measured over seeds 0-5 of each framework: over 20 updates of 8 episodes, the mean return
of the last 24 episodes beat that of the first 24 by 14 to 82 (first: -224 to -149).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
from PIL import Image

from example_runner import run_example, summary

with warnings.catch_warnings():
    # Box2D (which LunarLander-v3 runs on) is a SWIG-built extension that warns while it
    # imports ("builtin type SwigPyPacked has no __module__ attribute"); with warnings as
    # errors that import crashes the interpreter. Import it once here, that warning ignored.
    warnings.filterwarnings("ignore", r"builtin type [Ss]wig\w* has no __module__ attribute", DeprecationWarning)
    importlib.import_module("Box2D")

NAMES = ["lunar_lander_torch", "lunar_lander_jax"]


@pytest.fixture(scope="module", params=NAMES)
def short_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    argv = ["--steps", "20", "--seed", "0", "--quiet", "--no-gif", "--eval-episodes", "2", "--out", str(out)]
    return (request.param, *run_example(request.param, argv))


def test_return_rises(short_run):
    _, results, _, _ = short_run
    returns = results["returns"]
    assert len(returns) == 20 * 8
    assert np.mean(returns[-24:]) > np.mean(returns[:24]) + 10, (np.mean(returns[:24]), np.mean(returns[-24:]))
    assert results["final_avg_return"] == pytest.approx(np.mean(returns[-50:]))


def test_policy_is_generated_by_a_smaller_hypernetwork(short_run):
    _, results, _, _ = short_run
    assert results["policy_params"] == 8 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4
    assert results["hypernetwork_params"] < results["policy_params"] / 3


def test_plots_and_summary(short_run):
    name, results, stdout, stderr = short_run
    assert stderr == ""
    assert set(results["files"]) == {"learning_curve", "weights"}  # --no-gif
    for path in results["files"].values():
        assert path.stat().st_size > 0
    line = summary(stdout)
    assert line.startswith(f"summary {name}: final_avg_return={results['final_avg_return']:.1f}")
    assert "episodes=160" in line


@pytest.mark.parametrize("name", NAMES)
def test_episode_gif_and_progress_bar(name, tmp_path):
    argv = ["--steps", "1", "--episodes-per-step", "2", "--max-episode-steps", "40", "--eval-episodes", "1",
            "--out", str(tmp_path)]  # fmt: skip
    results, _, stderr = run_example(name, argv)
    assert "REINFORCE" in stderr
    with Image.open(results["files"]["gif"]) as gif:
        assert gif.n_frames == 20  # 40 steps, every second frame
        assert gif.size == (300, 200)  # half of the 600x400 render
