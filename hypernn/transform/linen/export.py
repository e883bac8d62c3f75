"""``hypernn.materialize`` and ``hypernn.summary`` for linen hypernetworks (which hold no
values: both take the hypernetwork's ``variables``).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn import hypernetize
    >>> model, x = nn.Dense(2), jnp.ones((3, 4))
    >>> hnet = hypernetize(model, embedding_dim=3, num_embeddings=2, example_inputs=(x,))
    >>> variables = hnet.init(jax.random.key(0), x)
    >>> plain = materialize(hnet, variables)
    >>> bool(jnp.allclose(model.apply(plain, x), hnet.apply(variables, x)))
    True
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from ...errors import ConditionError, OptionTypeError, UnsupportedModelError
from ...export import check_static
from ...diagnostics import HypernetworkSummary, summarize
from .dynamic import LinenDynamicHypernetwork
from .module import LinenHypernetwork
from .start import COLLECTION

__all__ = ["materialize", "summary"]


def _checked(hnet: Any, variables: Optional[Mapping[str, Any]], what: str) -> None:
    if not isinstance(hnet, LinenHypernetwork):
        raise UnsupportedModelError(
            f"`hnet` must be a hypernetwork made by hypernn.hypernetize; got {type(hnet).__name__}, a plain model "
            f"(there is nothing to {what})."
        )
    if not isinstance(variables, Mapping):
        raise OptionTypeError(
            f"{what} of a linen hypernetwork needs its variables (what `hnet.init` returned, trained): "
            f"`hypernn.{what}(hnet, variables)`; got {type(variables).__name__}."
        )


def _condition_kwargs(hnet: Any, condition: Any, what: str, default: Any = None) -> Dict[str, Any]:
    if not isinstance(hnet, LinenDynamicHypernetwork):
        check_static(hnet, condition)
        return {}
    if condition is None:
        if default is None:
            raise ConditionError(
                f"materializing a dynamic hypernetwork needs the condition whose weights to bake in: "
                f"`hypernn.{what}(hnet, variables, condition=c)`."
            )
        condition = default
    if np.ndim(condition) > (0 if hnet.num_conditions is not None else 1):
        raise ConditionError(f"{what} needs one condition (shape (C,) or one id), not a batch: got shape "
                             f"{np.shape(condition)}; {what} each condition in turn.")  # fmt: skip
    return {"condition": condition}


def materialize(hnet: Any, variables: Optional[Mapping[str, Any]] = None, *, condition: Any = None,
                **generate_params_kwargs: Any) -> Dict[str, Any]:  # fmt: skip
    """The variable tree of the original module with the generated weights baked in:
    ``model.apply(materialize(hnet, variables), x) == hnet.apply(variables, x)``."""
    _checked(hnet, variables, "materialize")
    kwargs = {**_condition_kwargs(hnet, condition, "materialize"), **generate_params_kwargs}
    params = hnet.apply(variables, method="generated_variables", **kwargs)
    others = {c: v for c, v in variables.items() if c not in ("params", COLLECTION)}
    return {**others, "params": params}


def _size(tree: Any) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


def summary(hnet: Any, variables: Optional[Mapping[str, Any]] = None, *, condition: Any = None,
            **generate_params_kwargs: Any) -> HypernetworkSummary:  # fmt: skip
    """:class:`~hypernn.diagnostics.HypernetworkSummary` of a linen hypernetwork with ``variables``
    (a dynamic one at ``condition``, default the zero condition or id 0)."""
    _checked(hnet, variables, "summary")
    zero = None
    if isinstance(hnet, LinenDynamicHypernetwork):
        zero = 0 if hnet.num_conditions is not None else np.zeros(hnet.condition_dim, np.float32)
    kwargs = {**_condition_kwargs(hnet, condition, "summary", zero), **generate_params_kwargs}
    flat, _ = hnet.apply(variables, method="generate_params", **kwargs)
    plan = hnet.plan
    options = hnet.hypernn_options()
    settings = f"init={plan.init!r}, warm_start={plan.warm_start}"
    if plan.low_rank_weights:
        settings += f", low_rank={options.low_rank} (scale {options.low_rank_scale:g})"
    if zero is not None and condition is None:
        settings += ", at condition id 0" if hnet.num_conditions is not None else ", at the zero condition"
    start = variables.get(COLLECTION, {})
    frozen = _size(start.get("low_rank_bases", {})) + _size(start.get("base", ()))
    return summarize(
        plan.layout, np.asarray(flat, dtype=np.float64), plan.start_targets, model_name=plan.selection.model_name,
        target_params=plan.num_model_parameters, hypernetwork_params=_size(variables["params"]), settings=settings,
        frozen_params=frozen, replaced_values=sum(w.size for w in plan.low_rank_weights),
    )  # fmt: skip
