"""Factored low-rank ``nn.Dense`` calls in linen hypernetworks (the math: :mod:`..jaxlowrank`).

The model runs with each factored kernel's frozen ``W0`` at the kernel's place in its
``params``; an ``nn.intercept_methods`` interceptor gives the ``nn.Dense`` at that module
path a :class:`~hypernn.transform.jaxlowrank.FactoredDot` for the call (its
``dot_general``, or what its ``dot_general_cls`` builds, is restored after), which adds
``scale * (x @ B.T) @ A.T`` and never builds ``W0 + scale * (A @ B).T``.

Factored: the kernel of an ``nn.Dense`` (or a subclass that keeps ``Dense.__call__``),
2-D (not stacked by ``nn.scan``/``nn.vmap``). Convolutions and other kernels are merged.
As in PEFT, code that reads a factored layer's kernel directly (not through its call)
sees ``W0``; ``hypernn.materialize`` bakes the merged kernels in.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn import hypernetize
    >>> hnet = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2, low_rank=2, example_inputs=(jnp.ones((1, 5)),))
    >>> factored_kernels(hnet.plan)
    {'kernel': ()}
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Mapping, Tuple

import flax.linen as nn
import jax
from jax import lax

from ..jaxlowrank import FactoredDot, Factors, runs_factored, split_low_rank
from ..jaxutil import unflatten, with_attribute
from .start import COLLECTION

__all__ = ["factored_dense", "factored_kernels", "frozen_kernels", "split_generated"]

Path = Tuple[str, ...]


def factored_kernels(plan: Any) -> Dict[str, Path]:
    """The adapted kernels of a :class:`~hypernn.transform.linen.module.LinenPlan` that run
    factored: name -> the path of their ``nn.Dense``."""
    specs = {spec.name: spec for spec in plan.selection.chosen}
    paths = dict(plan.slots)
    return {w.name: tuple(paths[w.name][:-1]) for w in plan.low_rank_weights if runs_factored(w, specs[w.name], nn.Dense)}


def split_generated(hnet: Any, generated_params: jax.Array) -> Tuple[Dict[str, jax.Array], Dict[str, Factors]]:
    """``(tensors, factors)`` for a call of ``hnet``'s model: the generated tensors by name
    (other low-rank kernels merged, the factored ones left out) and the factored kernels'
    ``(scale * A, B)`` by name; leading (per-sample) dims kept."""
    plan = hnet.plan
    tensors = unflatten(generated_params, plan.layout)
    if not plan.low_rank_weights:
        return tensors, {}
    bases = hnet.get_variable(COLLECTION, "low_rank_bases")
    scale = hnet.hypernn_options().low_rank_scale
    return split_low_rank(tensors, plan.low_rank_weights, bases, scale, factored_kernels(plan))


def frozen_kernels(hnet: Any, factors: Mapping[str, Factors]) -> Dict[str, jax.Array]:
    """The frozen ``W0`` of each factored kernel, by name (what the params tree holds there)."""
    if not factors:
        return {}
    bases = hnet.get_variable(COLLECTION, "low_rank_bases")
    return {name: bases[name] for name in factors}


def _interceptor(by_path: Mapping[Path, Factors]) -> Callable[..., Any]:
    def intercept(next_fun: Any, args: Tuple, kwargs: Dict, context: Any) -> Any:
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense):
            return next_fun(*args, **kwargs)
        factors = by_path.get(tuple(module.scope.path)) if module.scope is not None else None
        if factors is None:
            return next_fun(*args, **kwargs)
        if module.dot_general_cls is not None:
            cls = module.dot_general_cls
            attribute, value = "dot_general_cls", lambda: FactoredDot(cls(), *factors)
        else:
            attribute, value = "dot_general", FactoredDot(module.dot_general or lax.dot_general, *factors)
        return with_attribute(module, attribute, value, next_fun, *args, **kwargs)

    return intercept


@contextlib.contextmanager
def factored_dense(plan: Any, factors: Mapping[str, Factors]) -> Iterator[None]:
    """Within the block, the ``nn.Dense`` of each factored kernel in ``factors`` (by name)
    adds its delta to its own call (nothing is intercepted without factors)."""
    if not factors:
        yield
        return
    paths = factored_kernels(plan)
    with nn.intercept_methods(_interceptor({paths[name]: pair for name, pair in factors.items()})):
        yield
