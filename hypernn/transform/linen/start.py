"""Where generated linen weights start: the :mod:`hypernn.init` map for stateless modules.

A linen module keeps no values of its own, so the map's constants live in the variables,
in the collection :data:`COLLECTION` (``"hypernn"``) next to ``params``, made by
``hnet.init`` from the generator it has just drawn, exactly as torch and NNX measure theirs
at construction:

* ``start``: ``{"scale", "shift"}`` per generated tensor (``init="hyperfan"``, or any
  warm start), measured on that draw's raw output, so every tensor starts with exactly its
  own layer's default mean and std;
* ``base``: the warm-start offset (``hnet.apply(variables, x) == model.apply(pretrained, x)``
  at step 0);
* ``low_rank_bases``: each adapted kernel's frozen ``W0``.

Optimisers that update ``variables["params"]`` leave the collection alone; pass it back to
``apply`` (``{**variables, "params": params}``). ``hnet.init`` also folds the common part
of the hyperfan scales (:func:`~hypernn.init.common_scale_of`) into the generator's last
``Dense`` (:func:`fold_common_scale`), as torch and NNX do at construction, so the map
keeps only each tensor's ratio to it.

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> layout = plan_layout([("w", (2, 2)), ("b", (2,))], kind="global", num_embeddings=2)
    >>> raw = jnp.arange(6.0)
    >>> base = warm_base(layout, raw, (2.0, 1.0), (0.0, 0.0), {"w": jnp.ones(4)})
    >>> apply_start(raw, layout, {"scale": jnp.array([2.0, 1.0]), "shift": jnp.zeros(2)}, base)
    Array([1., 1., 1., 1., 4., 5.], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ...layout import Layout
from ..jaxstart import start_map
from ..jaxstart import warm_base as warm_base

__all__ = ["COLLECTION", "apply_start", "fold_common_scale", "last_dense_path", "measure", "warm_base"]

#: the linen collection holding the start map and frozen arrays (warm-start base, low-rank ``W0``)
COLLECTION = "hypernn"


def measure(value: Any) -> Optional[tuple]:
    """``(mean, std)`` of concrete values; ``None`` for abstract ones (traced structure)."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return None
    values = np.asarray(value, dtype=np.float64)
    return float(values.mean()), float(values.std())


def apply_start(raw: jax.Array, layout: Layout, start: Optional[Mapping[str, jax.Array]],
                base: Optional[jax.Array] = None) -> jax.Array:  # fmt: skip
    """The map on the raw flat output (identity without ``start``); leading dims kept."""
    if start is None:
        return raw
    return start_map(raw, layout, start["scale"].astype(raw.dtype), start["shift"].astype(raw.dtype), base)


def last_dense_path(tree: Mapping[str, Any], chunk_dim: int, path: Tuple[str, ...] = ()) -> Optional[Tuple[str, ...]]:
    """The path (inside ``tree``; ``()`` for ``tree`` itself) of the last
    ``{"kernel": (n, chunk_dim), ...}`` dict in creation order: the generator's output layer.

        >>> last_dense_path({"Dense_0": {"kernel": np.ones((4, 8))}, "Dense_1": {"kernel": np.ones((8, 6))}}, 6)
        ('Dense_1',)
    """
    kernel = tree.get("kernel")
    found = path if kernel is not None and not isinstance(kernel, Mapping) and np.shape(kernel)[-1:] == (chunk_dim,) \
        and np.ndim(kernel) == 2 else None  # fmt: skip
    for key, value in tree.items():
        if isinstance(value, Mapping):
            found = last_dense_path(value, chunk_dim, path + (key,)) or found
    return found


def _is_concrete(tree: Any) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def fold_common_scale(variables: Dict[str, Any], generator_key: str, chunk_dim: int, factor: jax.Array,
                      raw_of: Callable[[Mapping[str, Any]], jax.Array], *, linear: bool) -> Dict[str, Any]:  # fmt: skip
    """``variables`` with the generator's last ``Dense`` (kernel and bias) times ``factor``
    and the stored hyperfan scales divided by it (the generated values are unchanged).

    ``linear``: the raw output is known to be linear in that layer (the library's
    generators). Otherwise that is checked on concrete values with ``raw_of(variables)``
    (the raw output for a variable tree), and nothing is folded when it fails or while
    tracing (``jax.jit(hnet.init)`` with a custom generator).
    """
    params = variables.get("params", {})
    path = last_dense_path(params.get(generator_key, {}), chunk_dim)
    if path is None or (not linear and not _is_concrete(variables)):
        return variables
    layer = params[generator_key]
    for key in path:
        layer = layer[key]
    scaled_layer = {name: value * factor.astype(value.dtype) if name in ("kernel", "bias") else value
                    for name, value in layer.items()}  # fmt: skip
    start = variables[COLLECTION]["start"]
    folded = {
        **variables,
        "params": _replace_at(params, (generator_key, *path), scaled_layer),
        COLLECTION: {**variables[COLLECTION], "start": {**start, "scale": start["scale"] / factor.astype(start["scale"].dtype)}},
    }  # fmt: skip
    if linear:
        return folded
    before, after = np.asarray(raw_of(variables)), np.asarray(raw_of(folded))
    tolerance = 100 * float(jnp.finfo(before.dtype).eps)
    scale = float(factor)
    if np.allclose(after, scale * before, rtol=tolerance, atol=tolerance * scale * float(np.abs(before).max())):
        return folded
    return variables  # the output is not linear in that layer: keep the whole scale in the map


def _replace_at(tree: Mapping[str, Any], path: Tuple[str, ...], value: Any) -> Dict[str, Any]:
    head, *rest = path
    return {**tree, head: _replace_at(tree[head], tuple(rest), value) if rest else value}
