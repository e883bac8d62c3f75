"""JAX pieces shared by the linen and NNX backends (imports jax, never flax or torch).

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> layout = plan_layout([("a.kernel", (2, 2)), ("a.bias", (2,))], kind="global", num_embeddings=2)
    >>> {k: v.shape for k, v in unflatten(jnp.arange(6.0), layout).items()}
    {'a.kernel': (2, 2), 'a.bias': (2,)}
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import GeneratedParamsError, GeneratedParamsTypeError, GeneratorOutputError
from ..layout import Layout

#: activation names of :mod:`hypernn.factories` -> jax functions
JAX_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
                   "sigmoid": jax.nn.sigmoid, "identity": lambda x: x}  # fmt: skip

__all__ = ["JAX_ACTIVATIONS", "check_chunks", "check_generated_params", "dotted", "dtype_name", "is_floating", "set_path", "unflatten",
           "with_attribute"]


def dotted(path: Iterable[Any]) -> str:
    """``("Dense_0", "kernel")`` or a jax key path -> ``"Dense_0.kernel"``."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute) and not isinstance(key, (str, int)):
                key = getattr(key, attribute)
                break
        parts.append(str(key))
    return ".".join(parts)


def is_floating(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def set_path(tree: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
    """Put ``value`` at ``path`` in a nested dict, creating dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def check_chunks(chunks: Any, num_embeddings: int, chunk_dim: int, embedding_dim: int, lead: Tuple[int, ...] = ()) -> None:
    """Raise :class:`GeneratorOutputError` unless ``chunks`` has shape ``(*lead, E, chunk_dim)``
    (``lead``: the condition batch of a dynamic hypernetwork)."""
    expected = (*lead, num_embeddings, chunk_dim)
    shape = getattr(chunks, "shape", None)
    if shape is None or tuple(shape) != expected:
        given = tuple(shape) if shape is not None else type(chunks).__name__
        raise GeneratorOutputError(
            f"the weight generator must output shape {'(batch, ' if lead else '('}num_embeddings, chunk_dim)={expected}; "
            f"it gave {given}. "
            f"Build it with `generator_factory(embedding_dim={embedding_dim}, chunk_dim={chunk_dim})`."
        )


def check_generated_params(generated_params: Any, layout: Layout, *, batched: bool = False) -> None:
    """Raise a clear error unless ``generated_params`` is a float vector that fits ``layout``
    (or, with ``batched``, also a ``(B, n)`` batch of such vectors: one per sample)."""
    if not isinstance(generated_params, (jax.Array, np.ndarray)):
        raise GeneratedParamsTypeError(f"`generated_params` must be a jax array; got {type(generated_params).__name__}.")
    if not is_floating(generated_params.dtype):
        raise GeneratedParamsTypeError(f"`generated_params` must be a floating-point array; got dtype {generated_params.dtype}.")
    if batched and generated_params.ndim not in (1, 2):
        raise GeneratedParamsError(
            f"`generated_params` must be a vector (one weight set) or a (B, n) batch of vectors (one per sample); "
            f"got shape {tuple(generated_params.shape)}."
        )
    if not batched and generated_params.ndim != 1:
        raise GeneratedParamsError(
            f"`generated_params` must be a 1-D vector; got shape {tuple(generated_params.shape)}. "
            f"Use jax.vmap over the hypernetwork for a batch of vectors."
        )
    layout.plan_for(generated_params.shape[-1])


def unflatten(flat: jax.Array, layout: Layout) -> Mapping[str, jax.Array]:
    """Cut a flat vector into ``{name: array}``; leading (batch) dimensions are kept."""
    plan = layout.plan_for(flat.shape[-1])
    boundaries = np.cumsum(plan.sizes)[:-1].tolist()
    pieces = jnp.split(flat, boundaries, axis=-1)
    lead = tuple(flat.shape[:-1])
    tensors = {}
    for slot, index in zip(layout.slots, plan.keep):
        tensor = pieces[index].reshape(lead + slot.shape)
        for name in (slot.name,) + slot.aliases:
            tensors[name] = tensor
    return tensors


def with_attribute(module: Any, attribute: str, value: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` with ``module.attribute`` set to ``value`` (restored after,
    even on error): how interceptors swap a flax layer's ``dot_general`` and the like for
    one call of a frozen dataclass module."""
    original = getattr(module, attribute)
    object.__setattr__(module, attribute, value)
    try:
        return call(*args, **kwargs)
    finally:
        object.__setattr__(module, attribute, original)
