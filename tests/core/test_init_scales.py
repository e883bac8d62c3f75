"""The framework-free pieces of init, warm start, low rank and summary (no torch, no jax).

Layer classes are stand-ins named like the frameworks' own: the rules read class names
(and their bases), so the core never imports a framework. The rules are checked against
the frameworks' real draws in ``tests/torch/test_torch_init.py`` and the flax tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hypernn.default_inits import TargetInit, target_init, torch_fans
from hypernn.errors import ConfigurationError, OptionTypeError, SelectionError
from hypernn.init import CONSTANT_STD, piece_slots, plan_output_affine, slot_values
from hypernn.layout import plan_layout
from hypernn.lowrank import factor_entries, factor_inits, plan_low_rank, select_low_rank
from hypernn.options import HypernetizeOptions
from hypernn.specs import ParamSpec
from hypernn.diagnostics import summarize


def cls(name, *bases):
    return type(name, bases or (object,), {})


_ConvNd = cls("_ConvNd")
Linear, Conv2d, Embedding, LayerNorm = cls("Linear"), cls("Conv2d", _ConvNd), cls("Embedding"), cls("LayerNorm")
Custom, Dense, Conv, Embed, DenseGeneral = cls("Custom"), cls("Dense"), cls("Conv"), cls("Embed"), cls("DenseGeneral")
MyLinear = cls("MyLinear", Linear)


def spec(name, shape, owner, value=None):
    parts = name.split(".")[:-1]
    chain = (("", object),) + tuple((".".join(parts[: i + 1]), owner if i == len(parts) - 1 else object) for i in range(len(parts)))
    return ParamSpec(name, tuple(shape), "float32", (chain,), value=value)


def measure(value):
    return float(np.mean(value)), float(np.std(value))


# ---------------------------------------------------------------- default-init rules


@pytest.mark.parametrize("convention, name, shape, owner, shapes, std, mean", [
    ("torch", "fc.weight", (8, 12), Linear, {}, math.sqrt(1 / 36), 0.0),
    ("torch", "fc.bias", (8,), Linear, {"fc.weight": (8, 12)}, math.sqrt(1 / 36), 0.0),
    ("torch", "fc.weight", (8, 12), MyLinear, {}, math.sqrt(1 / 36), 0.0),  # subclasses follow their base
    ("torch", "conv.weight", (6, 2, 3, 3), Conv2d, {}, math.sqrt(1 / 54), 0.0),
    ("torch", "conv.bias", (6,), Conv2d, {"conv.weight": (6, 2, 3, 3)}, math.sqrt(1 / 54), 0.0),
    ("torch", "emb.weight", (10, 4), Embedding, {}, 1.0, 0.0),
    ("torch", "norm.weight", (4,), LayerNorm, {}, 0.0, 1.0),
    ("torch", "norm.bias", (4,), LayerNorm, {}, 0.0, 0.0),
    ("flax", "Dense_0.kernel", (12, 8), Dense, {}, math.sqrt(1 / 12), 0.0),
    ("flax", "Dense_0.bias", (8,), Dense, {}, 0.0, 0.0),
    ("flax", "Conv_0.kernel", (3, 3, 2, 6), Conv, {}, math.sqrt(1 / 18), 0.0),
    ("flax", "Embed_0.embedding", (10, 16), Embed, {}, 0.25, 0.0),
    ("flax", "LayerNorm_0.scale", (4,), LayerNorm, {}, 0.0, 1.0),
])  # fmt: skip
def test_rules(convention, name, shape, owner, shapes, std, mean):
    init = target_init(spec(name, shape, owner), convention=convention, shapes=shapes)
    assert init.std == pytest.approx(std) and init.mean == mean and init.rule


def test_unknown_layers_are_measured_or_fall_back_to_the_frameworks_kernel_init():
    values = np.random.default_rng(0).normal(0.5, 2.0, (30, 40))
    measured = target_init(spec("m.w", (30, 40), Custom, values), convention="torch", shapes={}, measure=measure)
    assert (measured.mean, measured.std) == pytest.approx(measure(values)) and "measured" in measured.rule
    constant = target_init(spec("m.s", (5,), Custom, np.full(5, 3.0)), convention="flax", shapes={}, measure=measure)
    assert (constant.mean, constant.std, constant.rule) == (3.0, 0.0, "measured constant")
    general = target_init(spec("D.kernel", (4, 3, 5), DenseGeneral, None), convention="flax", shapes={})
    assert general.std == pytest.approx(math.sqrt(1 / 12))
    assert target_init(spec("m.w", (30, 40), Custom), convention="torch", shapes={}).std == pytest.approx(math.sqrt(1 / 120))
    assert target_init(spec("m.b", (5,), Custom), convention="torch", shapes={}).is_constant
    assert torch_fans((6, 2, 3, 3)) == (18, 54)


def test_unknown_convention_is_refused():
    with pytest.raises(ConfigurationError, match=r"`convention` must be one of \('torch', 'flax'\); got 'mxnet'\."):
        target_init(spec("fc.weight", (2, 2), Linear), convention="mxnet", shapes={})


# ---------------------------------------------------------------- the affine map

SHAPES = [("w", (6, 50)), ("b", (6,)), ("s", (1,)), ("norm", (20,)), ("e", (0,))]
TARGETS = [TargetInit(0.1), TargetInit(0.3), TargetInit(0.2, 0.5), TargetInit(0.0, 1.0), TargetInit(0.7)]


@pytest.mark.parametrize("kind, num_embeddings", [("global", 3), ("global", 40), ("per_tensor", 20)])
def test_hyperfan_gives_each_slot_its_target_mean_and_std(kind, num_embeddings):
    layout = plan_layout(SHAPES, kind=kind, num_embeddings=num_embeddings)
    raw = np.random.default_rng(1).normal(2.0, 3.0, layout.generated_size)
    plan = plan_output_affine(layout, raw, TARGETS, init="hyperfan")
    flat = plan.apply(raw)
    w, b, s, norm, e = slot_values(layout, flat)
    assert (w.mean(), w.std()) == pytest.approx((0.0, 0.1), abs=1e-12)
    assert (b.mean(), b.std()) == pytest.approx((0.0, 0.3), abs=1e-12)
    assert s[0] == pytest.approx(0.5)  # one value: starts at the target's mean
    assert (norm.mean(), norm.std()) == pytest.approx((1.0, CONSTANT_STD), abs=1e-12)
    assert e.size == 0 and plan.scales[4] == 1.0
    used = np.zeros(layout.generated_size, bool)
    for slot in layout.slots:
        used[slot.offset : slot.offset + slot.size] = True
    assert np.array_equal(flat[~used], raw[~used]), "unused values pass through"
    # one scale per slot, measured against the whole raw spread for the one-value slot
    spread = np.concatenate(slot_values(layout, raw)).std()
    assert plan.scales[2] == pytest.approx(0.2 / spread)


def test_default_init_is_no_map_and_constant_raw_output_is_left_alone():
    layout = plan_layout(SHAPES[:2], kind="global", num_embeddings=4)
    assert plan_output_affine(layout, np.ones(layout.generated_size), TARGETS[:2], init="default") is None
    plan = plan_output_affine(layout, np.full(layout.generated_size, 2.0), TARGETS[:2], init="hyperfan")
    assert plan.scales == (1.0, 1.0) and plan.shifts == (0.0, 0.0)


@pytest.mark.parametrize("init", ["hyperfan", "default"])
def test_warm_start_base_reproduces_the_start_values_at_the_raw_output(init):
    layout = plan_layout(SHAPES[:4], kind="per_tensor", num_embeddings=20)
    rng = np.random.default_rng(2)
    raw = rng.normal(size=layout.generated_size)
    start = {"w": rng.normal(size=(6, 50)), "norm": np.ones(20)}
    plan = plan_output_affine(layout, raw, TARGETS[:4], init=init, start=start)
    w, b, s, norm = slot_values(layout, plan.apply(raw))
    assert np.allclose(w, start["w"].reshape(-1)) and np.allclose(norm, 1.0)
    if init == "hyperfan":  # slots without start values keep their init
        assert (b.mean(), b.std()) == pytest.approx((0.0, 0.3), abs=1e-12)
    moved = plan.apply(raw + 1.0)
    assert np.allclose(slot_values(layout, moved)[0] - start["w"].reshape(-1), plan.scales[0])


def test_piece_slots_mark_gaps():
    layout = plan_layout([("a", (3,)), ("b", (2,))], kind="per_tensor", chunk_dim=2)
    assert piece_slots(layout) == ((3, 1, 2), (0, 2, 1))


# ---------------------------------------------------------------- low rank


def test_low_rank_plan_shapes_for_both_conventions():
    (torch_w,) = plan_low_rank([spec("conv.weight", (6, 2, 3, 3), Conv2d)], rank=4, convention="torch", model_name="M")
    assert torch_w.factor_shapes == ((6, 4), (4, 18)) and torch_w.factor_size == 4 * 24 and torch_w.size == 108
    (flax_w,) = plan_low_rank([spec("Conv_0.kernel", (3, 3, 2, 6), Conv)], rank=4, convention="flax", model_name="M")
    assert flax_w.factor_shapes == ((6, 4), (4, 18))
    assert factor_entries([torch_w]) == (("conv.weight.A", (6, 4)), ("conv.weight.B", (4, 18)))
    a, b = factor_inits(torch_w, TargetInit(0.2))
    assert a.std == 0.5 and b.std == 0.2
    assert math.sqrt(4 * a.std**2 * b.std**2) == pytest.approx(0.2), "A @ B starts at the layer's own std"


def test_low_rank_selection():
    specs = [spec("fc.weight", (4, 3), Linear), spec("fc.bias", (4,), Linear), spec("emb.weight", (5, 4), Embedding)]
    selection, weights = select_low_rank(specs, targets=None, exclude=None, rank=2, convention="torch", model_name="M")
    assert selection.names == ("fc.weight",) and weights[0].name == "fc.weight"
    with pytest.raises(SelectionError, match=r"also holds 'fc\.bias' \(Linear\), 'emb\.weight' \(Embedding\)\. "
                                             r"Narrow `targets` to those weights \(e\.g\. add `exclude=\['bias'\]`\)"):
        select_low_rank(specs, targets=["fc", "emb"], exclude=None, rank=2, convention="torch", model_name="M")
    with pytest.raises(SelectionError, match=r"M has no weights of flax linen Dense, Conv and NNX Linear, Conv"):
        select_low_rank(specs, targets=None, exclude=None, rank=2, convention="flax", model_name="M")


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("kwargs, error, message", [
    ({"init": "xavier"}, ConfigurationError, r"`init` must be one of \('hyperfan', 'default'\); got 'xavier'\."),
    ({"init": None}, OptionTypeError, r"`init` must be one of .*; got None of type NoneType\."),
    ({"warm_start": "yes"}, OptionTypeError, r"`warm_start` must be a bool \(or None for the default\); got 'yes'\."),
    ({"low_rank": 2.0}, OptionTypeError, r"`low_rank` must be a positive int or None; got 2\.0 of type float\."),
    ({"low_rank": 2, "low_rank_scale": "big"}, OptionTypeError, r"`low_rank_scale` must be a positive number; got 'big'"),
    ({"low_rank": 2, "low_rank_scale": math.inf}, ConfigurationError, r"`low_rank_scale` must be a positive finite number"),
])  # fmt: skip
def test_option_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        HypernetizeOptions(embedding_dim=2, num_embeddings=2, **kwargs)


def test_warm_start_defaults_to_low_rank():
    assert not HypernetizeOptions(embedding_dim=2, num_embeddings=2).starts_at_model
    assert HypernetizeOptions(embedding_dim=2, num_embeddings=2, low_rank=3).starts_at_model
    assert not HypernetizeOptions(embedding_dim=2, num_embeddings=2, low_rank=3, warm_start=False).starts_at_model
    assert HypernetizeOptions(embedding_dim=2, num_embeddings=2, warm_start=True).starts_at_model


# ---------------------------------------------------------------- summary


def test_summary_data_and_text():
    layout = plan_layout([("a", (3, 4)), ("b", (4,))], kind="per_tensor", chunk_dim=5)
    flat = np.arange(layout.generated_size, dtype=float)
    summary = summarize(layout, flat, [TargetInit(0.5, rule="r"), TargetInit(0.0, 1.0, "ones")], model_name="M",
                        target_params=16, hypernetwork_params=4, frozen_params=3, replaced_values=16, settings="x")  # fmt: skip
    a, b = summary.tensors
    assert (a.chunks, b.chunks) == ((0, 2), (3, 3))
    assert a.generated_mean == pytest.approx(np.arange(12).mean()) and b.generated_std == pytest.approx(np.arange(15, 19).std())
    assert a.std_ratio == pytest.approx(a.generated_std / 0.5) and math.isnan(b.std_ratio)
    assert summary.compression_ratio == 4.0 and summary.totals()["unused_values"] == layout.unused
    assert [row["name"] for row in summary.as_dicts()] == ["a", "b"]
    text = str(summary).splitlines()
    assert text[0] == "M hypernetwork: per_tensor layout, 4 chunks x 5 values, x"
    assert text[-1] == ("target params 16, generated values 16 (4 unused) replacing 16 weight values, "
                        "hypernetwork params 4 trainable + 3 frozen; compression 4.0x")  # fmt: skip
    zero = summarize(layout, flat, [TargetInit(0.5)] * 2, model_name="M", target_params=1, hypernetwork_params=0)
    assert zero.compression_ratio == math.inf
