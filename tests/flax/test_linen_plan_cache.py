"""Lazily planned linen hypernetworks: each keeps its own plan (options differ, model equal)."""

import gc

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from hypernn import hypernetize
from hypernn.errors import OptionTypeError
from hypernn.transform.linen import module as linen_module


def test_equal_models_with_other_options_get_their_own_plans():
    x = jnp.ones((1, 5))
    first = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2)
    first.init(jax.random.key(0), x)
    second = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=3)
    assert second.init(jax.random.key(0), x)["params"]["weight_generator"]["kernel"].shape == (4, 6)
    kernel_only = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2, targets=["kernel"])
    variables = kernel_only.init(jax.random.key(0), x)
    assert variables["params"]["target_network"]["bias"].shape == (3,)  # the bias stayed a parameter


def test_plans_are_dropped_with_their_hypernetwork():
    before = len(linen_module._PLANS)
    hnet = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2)
    hnet.init(jax.random.key(0), jnp.ones((1, 5)))
    assert len(linen_module._PLANS) == before + 1
    del hnet
    gc.collect()
    assert len(linen_module._PLANS) == before


def test_a_lazily_planned_hypernetwork_reports_its_plan_after_init():
    x = jnp.ones((2, 5))
    hnet = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2)
    variables = hnet.init(jax.random.key(0), x)
    assert hnet.layout.num_params == 18 and hnet.selection.names == ("bias", "kernel")
    generated = hnet.apply(variables, method=hnet.generated_variables)
    assert generated["kernel"].shape == (5, 3)
    expected = nn.Dense(3).apply({"params": generated}, x)
    assert jnp.allclose(hnet.apply(variables, x), expected)


def test_traces_at_several_batch_sizes_share_one_plan_but_other_shapes_do_not():
    hnet = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2)
    variables = hnet.init(jax.random.key(0), jnp.ones((4, 5)))
    hnet.apply(variables, jnp.ones((1, 5)))  # another batch size: another trace, the same plan
    assert hnet.layout.num_params == 18
    hnet.init(jax.random.key(0), jnp.ones((1, 7)))  # another input width: another plan
    with pytest.raises(OptionTypeError, match=r"traced with 2 different input structures"):
        hnet.layout
