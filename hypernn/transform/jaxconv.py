"""A convolution as patches and one matrix product, for per-sample kernels under ``vmap``.

``jax.vmap`` of a convolution whose kernel differs per sample becomes one grouped
convolution (``feature_group_count=B``). On CPU, XLA computes that convolution's kernel
gradient as a dense convolution about ``B`` times too large: at batch 256 a small CNN's
training step took 1.5 s instead of 14 ms (``benchmarks/jax_dynamic_step.py``). Extracting
the patches (``lax.conv_general_dilated_patches``) and contracting them with the kernel in
one ``einsum`` computes the same convolution; under ``vmap`` that is a batched matrix
product, fast forward and backward. The dynamic linen and NNX hypernetworks use it for
convolutions whose kernel is generated per sample.

    >>> import jax, jax.numpy as jnp
    >>> x, k = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
    >>> dims = ("NHWC", "HWIO", "NHWC")
    >>> fast = patches_conv(x, k, (1, 1), "VALID", dimension_numbers=dims)
    >>> bool(jnp.allclose(fast, jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dims)))
    True
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
from jax import lax

__all__ = ["patches_conv"]


def _trivial(dilation: Optional[Sequence[int]]) -> bool:
    return dilation is None or all(d == 1 for d in dilation)


def patches_conv(
    lhs: Any,
    rhs: Any,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **extra: Any,
) -> Any:
    """``lax.conv_general_dilated``'s result (same signature), as patches times kernel;
    grouped and input-dilated (transposed) convolutions, and calls with further options
    (``out_sharding=``), go to ``lax.conv_general_dilated``."""
    extra = {name: value for name, value in extra.items() if value is not None}
    if feature_group_count != 1 or batch_group_count != 1 or not _trivial(lhs_dilation) or extra:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                        feature_group_count, batch_group_count, precision, preferred_element_type,
                                        **extra)  # fmt: skip
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    out_feature, in_feature, *spatial = dims.rhs_spec
    filter_shape = tuple(rhs.shape[d] for d in spatial)
    patches = lax.conv_general_dilated_patches(
        lhs, filter_shape, window_strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        precision=precision, preferred_element_type=preferred_element_type,
    )  # fmt: skip
    # patch features are ordered (input feature, *filter spatial): lay the kernel out alike
    kernel = jnp.transpose(rhs, (in_feature, *spatial, out_feature)).reshape(-1, rhs.shape[out_feature])
    out_batch, out_channel, *out_spatial = dims.out_spec
    moved = jnp.moveaxis(patches, out_channel, -1)
    product = jnp.einsum("...f,fo->...o", moved, kernel, precision=precision,
                         preferred_element_type=preferred_element_type)  # fmt: skip
    return jnp.moveaxis(product, -1, out_channel)
