"""``patches_conv`` equals ``lax.conv_general_dilated`` (values and gradients), also per
sample under ``vmap``, for every layout, stride, padding and dilation; other cases defer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from hypernn.transform.jaxconv import patches_conv

CASES = [
    (("NHWC", "HWIO", "NHWC"), (2, 9, 8, 3), (3, 2, 3, 5), (1, 1), "VALID", None),
    (("NHWC", "HWIO", "NHWC"), (2, 9, 8, 3), (3, 3, 3, 5), (2, 1), "SAME", (2, 1)),
    (("NCHW", "OIHW", "NCHW"), (2, 3, 9, 8), (5, 3, 3, 3), (1, 2), ((1, 2), (0, 1)), None),
    (("NWC", "WIO", "NWC"), (2, 11, 3), (4, 3, 6), (2,), "SAME", (2,)),
    (("NDHWC", "DHWIO", "NDHWC"), (1, 5, 6, 7, 2), (2, 3, 2, 2, 3), (1, 1, 1), "VALID", None),
]


@pytest.mark.parametrize("dims, lhs_shape, rhs_shape, strides, padding, dilation", CASES)
def test_values_and_gradients_equal_lax(dims, lhs_shape, rhs_shape, strides, padding, dilation):
    x = jax.random.normal(jax.random.key(0), lhs_shape)
    w = jax.random.normal(jax.random.key(1), rhs_shape)

    def run(conv, x, w):
        return conv(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dims)

    fast, slow = run(patches_conv, x, w), run(lax.conv_general_dilated, x, w)
    assert fast.shape == slow.shape
    assert jnp.allclose(fast, slow, atol=1e-4)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(run(conv, x, w)))  # noqa: E731
    for a, b in zip(jax.grad(loss(patches_conv), (0, 1))(x, w), jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)):
        assert jnp.allclose(a, b, atol=1e-3)


def test_per_sample_kernels_under_vmap_equal_a_loop():
    dims = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (4, 1, 6, 6, 2))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 2, 5))
    batched = jax.vmap(lambda x, w: patches_conv(x, w, (1, 1), "SAME", dimension_numbers=dims))(x, w)
    loop = jnp.stack([lax.conv_general_dilated(x[i], w[i], (1, 1), "SAME", dimension_numbers=dims) for i in range(4)])
    assert jnp.allclose(batched, loop, atol=1e-4)


def test_grouped_and_input_dilated_convolutions_defer_to_lax():
    dims = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    grouped = jax.random.normal(jax.random.key(1), (3, 3, 2, 6))
    assert jnp.array_equal(
        patches_conv(x, grouped, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2),
        lax.conv_general_dilated(x, grouped, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2),
    )
    w = jax.random.normal(jax.random.key(2), (3, 3, 4, 2))
    assert jnp.array_equal(
        patches_conv(x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=dims),
        lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=dims),
    )
