"""NNX: hyperfan init, warm start, low-rank deltas, ``hypernn.materialize`` and ``summary()``.

Init targets are checked against flax's own draws (fresh layers from many seeds); low-rank
outputs and gradients against the merge written out by hand.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hypernn
from hypernn import hypernetize, mlp_generator
from hypernn.errors import ConditionError, OptionTypeError, SelectionError, UnsupportedModelError
from hypernn.transform.nnx.introspect import FrozenWeight
from hypernn.transform.nnx.start import StartMap

TOL = dict(rtol=1e-5, atol=1e-5)


class Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(30, 12, rngs=rngs)
        self.conv = nnx.Conv(12, 16, (3,), rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.fc = nnx.Linear(16, 40, rngs=rngs)
        self.out = nnx.Linear(40, 3, rngs=rngs)

    def __call__(self, ids):
        h = jax.nn.relu(self.norm(self.conv(self.embed(ids)))).mean(1)
        return self.out(jax.nn.relu(self.fc(h)))


def flax_reference_std(name: str, draws: int = 20) -> float:
    """Std of ``name``'s values over ``draws`` freshly built models (flax's own init)."""
    values = [np.asarray(dict(nnx.to_flat_state(nnx.state(Net(rngs=nnx.Rngs(seed)), nnx.Param)))[tuple(name.split("."))][...])
              for seed in range(draws)]  # fmt: skip
    return float(np.concatenate([v.reshape(-1) for v in values]).std())


def generated(hnet) -> dict:
    flat, _ = hnet.generate_params()
    return {name: np.asarray(t) for name, t in hnet.target_tensors(flat).items()}


RANDOM_INIT = ["embed.embedding", "conv.kernel", "fc.kernel", "out.kernel"]


@pytest.mark.parametrize("conditioning", [hypernn.conditioning.film(), hypernn.conditioning.concat(3)], ids=["film", "concat"])
def test_dynamic_warm_start_holds_for_every_condition(conditioning):
    model = nnx.Sequential(nnx.Linear(5, 7, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(7, 2, rngs=nnx.Rngs(1)))
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=6, condition_dim=2, warm_start=True,
                       condition_factory=conditioning, rngs=nnx.Rngs(2))  # fmt: skip
    x, c = jax.random.normal(jax.random.key(5), (4, 5)), jax.random.normal(jax.random.key(6), (4, 2))
    np.testing.assert_allclose(hnet(x, condition=c), model(x), **TOL)


@pytest.mark.parametrize("generator", [None, mlp_generator((16,), activation="tanh")])
@pytest.mark.parametrize("layout, num_embeddings", [("global", 9), ("per_tensor", 40)])
def test_generated_std_is_the_layers_own_init_std(layout, num_embeddings, generator):
    hnet = hypernetize(Net(rngs=nnx.Rngs(0)), embedding_dim=8, num_embeddings=num_embeddings, layout=layout,
                       generator_factory=generator, rngs=nnx.Rngs(1))  # fmt: skip
    tensors = generated(hnet)
    for name in RANDOM_INIT:
        ratio = tensors[name].std() / flax_reference_std(name)
        assert abs(ratio - 1) < 0.25, f"{name}: {ratio:.3f}"
    for name, constant in [("conv.bias", 0.0), ("fc.bias", 0.0), ("norm.scale", 1.0), ("norm.bias", 0.0)]:
        assert abs(tensors[name].mean() - constant) < 1e-5 and 0.005 < tensors[name].std() < 0.02, name


def test_default_init_is_hyper_nns_plain_output_and_hyperfan_folds_into_the_generator():
    model = Net(rngs=nnx.Rngs(0))
    plain = hypernetize(model, embedding_dim=8, num_embeddings=9, init="default", rngs=nnx.Rngs(1))
    assert plain.output_affine is None
    raw = plain.weight_generator(plain.embedding_module(jnp.arange(9))).reshape(-1)
    np.testing.assert_array_equal(plain.generate_params()[0], raw)
    ratio = generated(plain)["conv.kernel"].std() / flax_reference_std("conv.kernel")
    assert abs(math.log(ratio)) > math.log(1.5), "hyper-nn's plain output is off the layer's init scale"
    folded = hypernetize(model, embedding_dim=8, num_embeddings=9, rngs=nnx.Rngs(1))
    ratio = np.asarray(folded.weight_generator.kernel[...]) / np.asarray(plain.weight_generator.kernel[...])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one common factor in the generator's parameters
    sizes = np.array([slot.size for slot in folded.layout.slots])
    assert abs((sizes * np.log(np.asarray(folded.output_affine.scale[...]))).sum() / sizes.sum()) < 1e-4


def test_the_map_and_warm_start_base_are_saved_state_not_params():
    hnet = hypernetize(Net(rngs=nnx.Rngs(0)), embedding_dim=8, num_embeddings=9, warm_start=True, rngs=nnx.Rngs(1))
    params = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(hnet, nnx.Param))}
    assert not any(p.startswith("output_affine") for p in params)
    saved = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(hnet, StartMap))}
    assert saved == {"output_affine.scale", "output_affine.shift", "output_affine.base"}
    fresh = hypernetize(Net(rngs=nnx.Rngs(0)), embedding_dim=8, num_embeddings=9, warm_start=True, rngs=nnx.Rngs(7))
    ids = jnp.arange(10).reshape(2, 5)
    nnx.update(fresh, nnx.state(hnet))
    np.testing.assert_allclose(fresh(ids), hnet(ids), **TOL)


@pytest.mark.parametrize("init", ["hyperfan", "default"])
def test_warm_start_equals_the_model_then_training_moves_away(init):
    model = Net(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=9, warm_start=True, init=init, rngs=nnx.Rngs(1))
    ids, y = jnp.arange(40).reshape(8, 5) % 30, jax.random.normal(jax.random.key(0), (8, 3))
    np.testing.assert_allclose(hnet(ids), model(ids), **TOL)
    optimizer = nnx.Optimizer(hnet, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(h, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(ids) - y) ** 2))(h)
        opt.update(h, grads)
        return loss, grads

    losses = []
    for _ in range(10):
        loss, grads = step(hnet, optimizer)
        losses.append(float(loss))
    assert float(jnp.abs(grads["weight_generator"]["kernel"][...]).sum()) > 0
    assert losses[-1] < losses[0]
    assert not np.allclose(hnet(ids), model(ids), atol=1e-3)


# ---------------------------------------------------------------- low rank


class Small(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4 * 16, 5, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        return self.fc(h.reshape(x.shape[0], -1))


def hand_low_rank(model, flat, scale, x, rank=2):
    """Factors cut by hand (layout order: conv.kernel A, B, fc.kernel A, B) and merged as
    ``W0 + scale * (A @ B).T`` in each kernel's layout; the conv runs with that kernel."""
    conv_w0, fc_w0 = model.conv.kernel[...], model.fc.kernel[...]
    offset, merged = 0, {}
    for name, w0 in [("conv", conv_w0), ("fc", fc_w0)]:
        out, fan = w0.shape[-1], math.prod(w0.shape[:-1])
        a = flat[offset : offset + out * rank].reshape(out, rank)
        offset += out * rank
        b = flat[offset : offset + rank * fan].reshape(rank, fan)
        offset += rank * fan
        merged[name] = w0 + scale * (a @ b).T.reshape(w0.shape)
    h = jax.lax.conv_general_dilated(x, merged["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + model.conv.bias[...])
    return h.reshape(x.shape[0], -1) @ merged["fc"] + model.fc.bias[...]


@pytest.mark.parametrize("scale, warm_start", [(1.0, False), (0.5, True)])
def test_low_rank_outputs_and_gradients_equal_the_hand_written_merge(scale, warm_start):
    model = Small(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=8, low_rank=2, low_rank_scale=scale,
                       warm_start=warm_start, rngs=nnx.Rngs(1))  # fmt: skip
    assert [s.name for s in hnet.layout.slots] == ["conv.kernel.A", "conv.kernel.B", "fc.kernel.A", "fc.kernel.B"]
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
    out, flat, _ = hnet(x, has_aux=True)
    np.testing.assert_allclose(out, hand_low_rank(model, flat, scale, x), **TOL)

    def hand_loss(h):
        flat_h, _ = h.generate_params()
        return jnp.sum(hand_low_rank(model, flat_h, scale, x) ** 2)

    got = nnx.grad(lambda h: jnp.sum(h(x) ** 2))(hnet)
    want = nnx.grad(hand_loss)(hnet)
    for (path, g), (_, w) in zip(nnx.to_flat_state(got), nnx.to_flat_state(want)):
        if path[0] != "target_network":  # the hand side uses the model's own biases
            np.testing.assert_allclose(g[...], w[...], rtol=1e-4, atol=1e-5, err_msg=str(path))
    assert float(jnp.abs(got["weight_generator"]["kernel"][...]).sum()) > 0


def test_low_rank_w0_is_frozen_warm_start_is_the_default_and_counts_are_reported():
    model = Small(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=8, low_rank=2, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
    np.testing.assert_allclose(hnet(x), model(x), **TOL)
    frozen = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(hnet, FrozenWeight))}
    assert frozen == {"target_network.conv.kernel", "target_network.fc.kernel"}
    params = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(hnet, nnx.Param))}
    assert "target_network.fc.kernel" not in params and "target_network.fc.bias" in params
    summary = hnet.summary()
    assert summary.generated_values == 2 * (4 + 18) + 2 * (5 + 64) == hnet.layout.num_params
    assert summary.replaced_values == 4 * 18 + 5 * 64
    assert summary.frozen_params == summary.replaced_values + hnet.layout.generated_size
    assert "low_rank=2" in str(summary)


def test_low_rank_refuses_unsupported_tensors():
    with pytest.raises(SelectionError, match=r"weights of flax linen Dense, Conv and NNX Linear, Conv .* also holds "
                                             r"'fc\.bias' \(Linear\)"):
        hypernetize(Small(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=8, low_rank=2, targets=["fc"], rngs=nnx.Rngs(1))


def test_dynamic_low_rank_adapters_equal_the_loop_and_materialize():
    model = Small(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=8, low_rank=2, warm_start=False, condition_dim=3,
                       rngs=nnx.Rngs(1))  # fmt: skip
    film = hnet.condition_module
    for _, variable in nnx.to_flat_state(nnx.state(film, nnx.Param)):
        variable[...] = 0.5 * jax.random.normal(jax.random.key(2), variable[...].shape)
    x, c = jax.random.normal(jax.random.key(1), (3, 4, 4, 2)), jax.random.normal(jax.random.key(3), (3, 3))
    out = hnet(x, condition=c)
    loop = jnp.concatenate([hnet(x[i : i + 1], condition=c[i]) for i in range(3)])
    np.testing.assert_allclose(out, loop, **TOL)
    assert not np.allclose(out, hnet(x, condition=c[0]))
    plain = hypernn.materialize(hnet, condition=c[1])
    assert type(plain) is Small
    np.testing.assert_allclose(plain(x[1:2]), out[1:2], **TOL)
    with pytest.raises(ConditionError, match=r"materializing a dynamic hypernetwork needs the condition"):
        hypernn.materialize(hnet)
    with pytest.raises(ConditionError, match=r"materialize needs one condition"):
        hypernn.materialize(hnet, condition=c)
    assert "at the zero condition" in str(hnet.summary())


# ---------------------------------------------------------------- materialize and summary


def test_materialize_round_trip_and_errors():
    model = Net(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=9, rngs=nnx.Rngs(1))
    plain = hypernn.materialize(hnet)
    ids = jnp.arange(10).reshape(2, 5)
    assert type(plain) is Net
    np.testing.assert_allclose(plain(ids), hnet(ids), **TOL)
    np.testing.assert_allclose(nnx.jit(lambda m, i: m(i))(hnet, ids), hnet(ids), **TOL)
    with pytest.raises(ConditionError, match=r"`condition` is only for dynamic hypernetworks"):
        hypernn.materialize(hnet, condition=jnp.zeros(2))
    with pytest.raises(OptionTypeError, match=r"`variables` is only for flax linen hypernetworks; a flax NNX hypernetwork"):
        hypernn.materialize(hnet, {"params": {}})
    with pytest.raises(UnsupportedModelError, match=r"got Net, a plain model"):
        hypernn.materialize(model)


def test_summary_rows_and_totals():
    model = Net(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=9, rngs=nnx.Rngs(1))
    summary = hnet.summary()
    rows = {row.name: row for row in summary.tensors}
    tensors = generated(hnet)
    for name, row in rows.items():
        assert row.generated_std == pytest.approx(float(tensors[name].std()), rel=1e-5)
    assert rows["fc.kernel"].target_std == pytest.approx(1 / 4) and rows["norm.scale"].target_mean == 1.0
    assert rows["embed.embedding"].target_std == pytest.approx(1 / math.sqrt(12))
    own = sum(v[...].size for _, v in nnx.to_flat_state(nnx.state(hnet, nnx.Param)))
    assert summary.hypernetwork_params == own
    assert summary.target_params == sum(v[...].size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert "fc.kernel" in str(summary) and "lecun_normal, fan_in=16" in str(summary)


@pytest.mark.parametrize("warm", [False, True], ids=["shift", "base"])
def test_start_map_eager_gather_equals_the_traced_piecewise_map(warm):
    from hypernn.layout import plan_layout
    from hypernn.transform.jaxstart import start_map

    layout = plan_layout([("w", (3, 4)), ("b", (3,)), ("v", (5,))], kind="global", num_embeddings=3)
    assert layout.unused > 0
    raw = jax.random.normal(jax.random.key(0), (2, layout.generated_size))  # per-sample leading dim
    scale, shift = jnp.array([2.0, 0.5, 3.0]), jnp.array([0.1, -1.0, 4.0])
    base = jax.random.normal(jax.random.key(1), (layout.generated_size,)) if warm else None
    expected = np.array(raw + base) if warm else np.array(raw)  # unused places: raw (+ base)
    for slot, s, h in zip(layout.slots, scale, shift):
        window = slice(slot.offset, slot.offset + slot.size)
        start = base[window] if warm else h
        expected[:, window] = start + s * raw[:, window]
    np.testing.assert_allclose(start_map(raw, layout, scale, shift, base), expected, **TOL)
    traced = jax.jit(lambda r, s, h, b: start_map(r, layout, s, h, b))(raw, scale, shift, base)
    np.testing.assert_allclose(traced, expected, **TOL)
