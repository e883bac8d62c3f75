"""The MNIST examples (``examples/mnist_torch.py``, ``examples/mnist_jax.py``): Ha et al.'s
parameter counts exactly, and both models learn in a short run.

Measured over seeds (torch 0-4, JAX 0-2): on the digits stand-in (1,347 training
images) 3 epochs took both models from a mean loss of 1.8-2.2 in the first epoch to
0.45-0.99 in the third (at most 0.46x) and to 9-16% test error; on 2,000 real MNIST
images, 2 epochs gave 15-19.4% (chance: 90%). The thresholds leave room for that spread.
"""

from __future__ import annotations

import pytest

from example_runner import run_example, summary

SHORT = ["--data", "digits", "--epochs", "3", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module", params=["mnist_torch", "mnist_jax"])
def short_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    results, stdout, stderr = run_example(request.param, SHORT + ["--out", str(out)])
    return request.param, results, stdout, stderr


def test_parameter_counts_are_ha_et_al(short_run):
    _, results, stdout, _ = short_run
    assert results["plain_conv2"] == 12_544  # 16 x 16 x 7 x 7, learned directly
    assert results["hyper_conv2"] == 4_240 + 4  # W_i, B_i, W_out, B_out, plus the layer embedding z
    assert results["plain_params"] - results["hyper_params"] == 12_544 - 4_244
    assert "12,544" in stdout and "4,244" in stdout and "4,240" in stdout and "0.76%" in stdout


def test_both_models_learn(short_run):
    _, results, _, _ = short_run
    for key in ("plain", "hyper"):
        losses = results[f"{key}_losses"]
        assert len(losses) == 3
        assert losses[-1] < 0.6 * losses[0], losses
        assert results[f"{key}_error"] < 0.3


def test_kernel_is_cut_into_one_chunk_per_output_filter(short_run):
    name, results, _, _ = short_run
    hnet = results["models"][1] if name == "mnist_torch" else results["models"]["hyper"]
    if name == "mnist_jax":
        hnet = hnet.bind(results["variables"]["hyper"])
    assert (hnet.num_embeddings, hnet.weight_chunk_dim, hnet.layout.unused) == (16, 784, 0)
    assert hnet.selection.names == (("conv2.weight",) if name == "mnist_torch" else ("conv2.kernel",))


def test_summary_line_and_plot(short_run):
    name, results, stdout, stderr = short_run
    assert stderr == ""  # --quiet: no bars
    assert summary(stdout).startswith(f"summary {name}: data=digits plain_error=")
    assert f"hyper_error={results['hyper_error']:.2%}" in summary(stdout)
    assert results["plot"].name == "conv2_filters.png" and results["plot"].stat().st_size > 0


def test_real_mnist_subset_and_progress_bars(tmp_path):
    results, stdout, stderr = run_example("mnist_torch", ["--data", "mnist", "--train-size", "2000", "--test-size",
                                                          "500", "--epochs", "2", "--lr", "3e-3", "--out", str(tmp_path)])  # fmt: skip
    assert results["data"] == "mnist" and "mnist: 2,000 training and 500 test images" in stdout
    assert results["plain_error"] < 0.35 and results["hyper_error"] < 0.35
    assert "plain conv2" in stderr and "hyper conv2" in stderr and "40/40" in stderr


def test_full_run_is_the_table_setting():
    from common import mnist

    _, config = mnist.parse_args("d", "mnist_torch", ["--full", "--epochs", "1", "--train-size", "10"])
    assert config == mnist.FULL
    assert (config.epochs, config.train_size, config.test_size, config.augment) == (40, None, None, True)
    _, short = mnist.parse_args("d", "mnist_torch", [])
    assert (short.epochs, short.train_size, short.augment) == (2, None, False)
