"""Factored low-rank ``nnx.Linear`` calls in NNX hypernetworks (the math: :mod:`..jaxlowrank`).

Each call runs a fresh copy of the target (``nnx.merge`` with copies), so the copy can be
changed for the call only: a factored kernel's slot keeps the frozen ``W0``, and the
copy's ``nnx.Linear`` that owns it gets a :class:`~hypernn.transform.jaxlowrank.FactoredDot`
as its ``dot_general``, which adds ``scale * (x @ B.T) @ A.T`` and never builds
``W0 + scale * (A @ B).T``. Neither the user's model nor :attr:`target_network` changes
(their ``nnx.state`` paths, checkpoints and ``hypernn.materialize`` stay as they were);
no flax class is patched.

Factored: the kernel of an ``nnx.Linear`` (or a subclass that keeps ``Linear.__call__``),
2-D (not stacked by ``nnx.vmap``), not tied. Convolutions and other kernels are merged.
As in PEFT, code that reads a factored layer's ``kernel`` directly (not through its call)
sees ``W0``; ``hypernn.materialize`` bakes the merged kernels in.

    >>> from flax import nnx
    >>> from hypernn.lowrank import plan_low_rank
    >>> from hypernn.transform.nnx.introspect import param_specs
    >>> specs = [s for s in param_specs(nnx.Linear(5, 3, rngs=nnx.Rngs(0))) if s.name == "kernel"]
    >>> factored_kernels(specs, plan_low_rank(specs, rank=2, convention="flax", model_name="Linear"))
    ('kernel',)
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
from flax import nnx

from ...lowrank import LowRankWeight
from ...specs import ParamSpec
from ..jaxlowrank import FactoredDot, Factors, runs_factored, split_low_rank
from ..jaxutil import unflatten

__all__ = ["factor_linears", "factored_kernels", "split_generated"]

Path = Tuple[Any, ...]


def factored_kernels(specs: Sequence[ParamSpec], weights: Sequence[LowRankWeight]) -> Tuple[str, ...]:
    """The names of the low-rank ``weights`` that run factored (``specs``: the model's)."""
    by_name = {spec.name: spec for spec in specs}
    return tuple(w.name for w in weights if runs_factored(w, by_name[w.name], nnx.Linear))


def split_generated(hnet: Any, generated_params: jax.Array) -> Tuple[Dict[str, jax.Array], Dict[str, Factors]]:
    """``(tensors, factors)`` for a call of ``hnet``'s model: the generated tensors by name
    (other low-rank kernels merged, the factored ones left out) and the factored kernels'
    ``(scale * A, B)`` by name; leading (per-sample) dims kept."""
    tensors = unflatten(generated_params, hnet.layout)
    if not hnet.low_rank_weights:
        return tensors, {}
    return split_low_rank(tensors, hnet.low_rank_weights, hnet._low_rank_bases(), hnet.low_rank_scale,
                          hnet.factored_kernels)  # fmt: skip


def factor_linears(model: nnx.Module, slot_paths: Sequence[Tuple[Path, str]], factors: Mapping[str, Factors]) -> None:
    """On a per-call copy of the target: the ``nnx.Linear`` owning each kernel in ``factors``
    runs ``W0`` (its slot's value) through a :class:`FactoredDot`."""
    if not factors:
        return
    owners = {tuple(path[:-1]): factors[name] for path, name in slot_paths if name in factors}
    for path, node in nnx.graph.iter_graph(model):
        pair = owners.get(tuple(path))
        if pair is not None and isinstance(node, nnx.Linear):
            node.dot_general = FactoredDot(node.dot_general, *pair)
