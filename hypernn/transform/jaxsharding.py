"""Partition specs for a JAX hypernetwork: its generator's output layer split on a mesh axis.

The weight generator's output layer maps embeddings to chunks, ``kernel (D, C)`` and
``bias (C,)``; it is usually the largest array a hypernetwork owns. This shards it along
the chunk axis ``C`` on ``model_axis`` and replicates everything else. It reads a linen
variable dict (or its ``params``), an ``nnx.State``, or an optimizer state built from
either, and returns the same structure with a ``PartitionSpec`` per array.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from jax.sharding import AbstractMesh
    >>> from hypernn import hypernetize
    >>> x = jnp.ones((1, 5))
    >>> hnet = hypernetize(nn.Dense(3), embedding_dim=4, chunk_dim=8, example_inputs=(x,))
    >>> variables = hnet.init(jax.random.key(0), x)
    >>> specs = hypernetwork_partition_specs(variables)
    >>> specs["params"]["weight_generator"]
    {'bias': P('model',), 'kernel': P(None, 'model')}
    >>> specs["params"]["embedding_module"]
    {'embedding': P()}
    >>> mesh = AbstractMesh((2, 3), ("data", "model"))  # 3 does not divide the chunk of 8
    >>> hypernetwork_partition_specs(variables, mesh=mesh)["params"]["weight_generator"]
    {'bias': P(), 'kernel': P()}

With a real mesh: ``shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)``,
then ``jax.device_put(variables, shardings)`` or ``jax.jit(..., out_shardings=shardings)``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import jax
from jax.sharding import PartitionSpec

from ..errors import ConfigurationError
from .jaxutil import dotted

__all__ = ["hypernetwork_partition_specs"]

GENERATOR = "weight_generator"
TARGET = "target_network"


def _parts(path: Tuple[Any, ...]) -> Tuple[str, ...]:
    """Key path -> names; the ``.value`` an ``nnx.Variable`` adds is dropped."""
    names = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue
        names.append(dotted([key]))
    return tuple(names)


def _generator_split(parts: Tuple[str, ...]) -> Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """``(prefix up to the generator, path inside it)``; ``None`` outside the generator."""
    if GENERATOR not in parts:
        return None
    at = parts.index(GENERATOR)
    if TARGET in parts[:at]:
        return None
    return parts[: at + 1], parts[at + 1 :]


def _natural(parts: Tuple[str, ...]) -> Tuple:
    """Sort key that puts ``Dense_2`` before ``Dense_10`` and ``layers.2`` before ``layers.10``."""
    return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)) for part in parts)


def _output_layers(paths: List[Tuple[str, ...]]) -> Dict[Tuple[str, ...], Tuple[str, ...]]:
    """For every generator (by prefix): the path of its last layer holding a ``kernel``."""
    layers: Dict[Tuple[str, ...], List[Tuple[str, ...]]] = {}
    for parts in paths:
        split = _generator_split(parts)
        if split is not None and split[1] and split[1][-1] == "kernel":
            layers.setdefault(split[0], []).append(split[1][:-1])
    return {prefix: max(found, key=_natural) for prefix, found in layers.items()}


def _axis_size(mesh: Any, model_axis: str) -> Optional[int]:
    if mesh is None:
        return None
    sizes = dict(mesh.shape)
    if model_axis not in sizes:
        raise ConfigurationError(
            f"`model_axis={model_axis!r}` is not an axis of the given `mesh` (axes {tuple(sizes)}); pass one of "
            f"them, or skip this helper for pure data parallelism (replicate every parameter)."
        )
    return sizes[model_axis]


def hypernetwork_partition_specs(tree: Any, *, mesh: Any = None, model_axis: str = "model") -> Any:
    """A ``PartitionSpec`` per array of ``tree``: the generator's output layer sharded.

    Args:
        tree: the hypernetwork's linen variables (or ``params``), its ``nnx.State``, or
            an optimizer state built from them (anything with the hypernetwork's tree paths).
        mesh: a ``jax.sharding.Mesh`` (or ``AbstractMesh``). When given, a layer whose
            chunk size the ``model_axis`` size does not divide stays replicated.
        model_axis: the mesh axis for the chunk dimension.

    Returns:
        ``tree``'s structure with ``PartitionSpec(None, ..., model_axis)`` for the ``kernel``
        and ``bias`` of the generator's output layer (its last layer with a ``kernel``, in
        natural name order: ``Dense_1`` after ``Dense_0``) and ``PartitionSpec()`` for all
        else: embeddings, unselected target parameters, statistics, optimizer counts.
    """
    size = _axis_size(mesh, model_axis)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    outputs = _output_layers([_parts(path) for path, _ in leaves])

    def spec(path: Tuple[Any, ...], leaf: Any) -> PartitionSpec:
        split = _generator_split(_parts(path))
        shape = tuple(getattr(leaf, "shape", ()))
        in_output_layer = split is not None and split[1][:-1] == outputs.get(split[0])
        if not (in_output_layer and split[1][-1] in ("kernel", "bias") and shape):
            return PartitionSpec()
        if size is not None and shape[-1] % size:
            return PartitionSpec()
        return PartitionSpec(*([None] * (len(shape) - 1)), model_axis)

    return jax.tree_util.tree_map_with_path(spec, tree)
