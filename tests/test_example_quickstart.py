"""The quickstart demo (``examples/quickstart.py``, run by ``make demo``) works and tells the truth.

Thresholds were set from 10 seeds (0-9): after 5 epochs the plain CNN scored 0.92-0.97 and
the hypernetwork (default ``init="hyperfan"``) 0.82-0.97 test accuracy (seed 0: 0.93); after
the default 20 epochs 0.976-0.987 and 0.896-0.987 (seed 0: 0.973; nine seeds >= 0.96).
Chance is 0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
SHORT = ["--epochs", "5", "--seed", "0", "--quiet"]


def _load_quickstart() -> Any:
    spec = importlib.util.spec_from_file_location("hypernn_example_quickstart", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quickstart = _load_quickstart()


def _run(argv) -> Tuple[Dict[str, Any], str, str]:
    """``quickstart.main(argv)`` with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            results = quickstart.main(argv)
    finally:
        torch.set_num_threads(threads)  # main sets it; leave other tests as they were
    return results, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def short_run() -> Tuple[Dict[str, Any], str, str]:
    return _run(SHORT)


def test_short_run_learns(short_run):
    results, _, _ = short_run
    assert results["plain_accuracy"] > 0.8
    assert results["hyper_accuracy"] > 0.8


def test_parameter_counts_and_ratio(short_run):
    results, _, _ = short_run
    hnet = results["model"]
    assert results["hyper_params"] == sum(p.numel() for p in hnet.parameters())
    # Every CNN parameter is generated: only the embedding table and the generator train.
    own = list(hnet.embedding_module.parameters()) + list(hnet.weight_generator.parameters())
    assert results["hyper_params"] == sum(p.numel() for p in own)
    assert list(hnet.target_network.parameters()) == []
    assert results["plain_params"] == sum(p.numel() for p in quickstart.make_cnn().parameters())
    assert hnet.num_target_parameters == results["plain_params"]
    assert results["hyper_params"] < results["plain_params"] / 10
    assert results["compression_ratio"] == results["plain_params"] / results["hyper_params"]


def test_materialized_model_matches_hypernetwork(short_run):
    results, _, _ = short_run
    assert results["materialized_accuracy"] == pytest.approx(results["hyper_accuracy"], abs=1.5 / 450)
    x_train, _, x_test, _ = quickstart.load_data()
    assert (len(x_train), len(x_test)) == (1347, 450)
    hnet = results["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(hnet.materialize()(x_test), hnet(x_test))


def test_report_is_printed_and_quiet_hides_progress(short_run):
    results, out, err = short_run
    assert err == ""  # --quiet: no progress bars
    assert "per_tensor layout: " in out
    assert f"{results['plain_params']:,}" in out and f"{results['hyper_params']:,}" in out
    assert f"{results['hyper_accuracy']:.2%}" in out
    assert f"{results['compression_ratio']:.1f}x" in out


def test_progress_bars_without_quiet():
    _, _, err = _run(["--epochs", "1"])
    assert "plain CNN" in err and "hypernetwork" in err and "1/1" in err


def test_same_seed_same_results(short_run):
    first, _, _ = short_run
    again, _, _ = _run(SHORT)
    for key in ("plain_accuracy", "hyper_accuracy", "materialized_accuracy"):
        assert again[key] == first[key]
    expected = first["model"].generated_state_dict()
    for name, tensor in again["model"].generated_state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_default_run_reaches_good_accuracy():
    results, _, _ = _run(["--quiet"])
    assert results["plain_accuracy"] >= 0.95
    assert results["hyper_accuracy"] >= 0.93
    assert results["compression_ratio"] > 10


def test_help_exits_zero():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--epochs", "--seed", "--embedding-dim", "--num-embeddings", "--quiet"):
        assert option in done.stdout
