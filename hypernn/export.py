"""``hypernn.materialize`` (this is ``hypernn.export``): the inverse of :func:`hypernn.hypernetize`.

It bakes the generated weights into a plain model of the original class (like PEFT's
``merge_and_unload``), independent of the hypernetwork: a torch ``nn.Module`` or an NNX
module, or, for flax linen (whose modules hold no values), the variable tree to
``apply`` the original module with. Low-rank weights are merged (``W0 + scale * A @ B``).
A dynamic hypernetwork needs the ``condition`` whose weights to bake in (one condition; a
batch is refused, materialize each).

    >>> import torch
    >>> from torch import nn
    >>> from hypernn import hypernetize
    >>> hnet = hypernetize(nn.Linear(3, 2), embedding_dim=2, num_embeddings=2)
    >>> plain = materialize(hnet)
    >>> x = torch.randn(4, 3)
    >>> type(plain).__name__, torch.allclose(plain(x), hnet(x))
    ('Linear', True)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .errors import ConditionError, OptionTypeError, UnsupportedModelError
from .transform.backends import backend_for

__all__ = ["check_dynamic", "check_no_variables", "check_static", "materialize", "summary"]


def materialize(hnet: Any, variables: Optional[Mapping[str, Any]] = None, /, *, condition: Any = None,
                **generate_params_kwargs: Any) -> Any:  # fmt: skip
    """A plain model (linen: its variables) with ``hnet``'s generated weights baked in.

    Args:
        hnet: a hypernetwork made by :func:`hypernn.hypernetize` (torch: also wrapped by
            ``torch.compile`` or ``DistributedDataParallel``).
        variables: flax linen only: the hypernetwork's variables (``hnet.init(...)``).
        condition: dynamic hypernetworks only (required there): one condition (``(C,)``
            or one id).
        **generate_params_kwargs: further arguments of ``generate_params`` (e.g. the
            ``hidden_state`` of recurrent conditioning).

    Returns:
        torch: an ``nn.Module`` of the original class; NNX: an ``nnx.Module`` of the
        original class; linen: ``{"params": ..., <other collections>}`` for the original
        module's ``apply``.

    Raises:
        UnsupportedModelError: ``hnet`` is not a hypernetwork.
        ConditionError: a dynamic hypernetwork without a condition or with a batch of
            them, or a static one given a condition.
    """
    backend = backend_for(hnet, "hnet")
    return backend.materialize(hnet, variables, condition=condition, **generate_params_kwargs)


def summary(hnet: Any, variables: Optional[Mapping[str, Any]] = None, /, *, condition: Any = None,
            **generate_params_kwargs: Any) -> Any:  # fmt: skip
    """:class:`~hypernn.diagnostics.HypernetworkSummary` of any hypernetwork: ``hnet.summary()``
    for torch and NNX; for linen (no values of its own) from its ``variables``. A dynamic
    hypernetwork is summarised at ``condition`` (default: the zero condition, or id 0).

        >>> from torch import nn
        >>> from hypernn import hypernetize
        >>> summary(hypernetize(nn.Linear(30, 20), embedding_dim=4, num_embeddings=8)).tensors[0].shape
        (20, 30)
    """
    backend = backend_for(hnet, "hnet")
    return backend.summary(hnet, variables, condition=condition, **generate_params_kwargs)


def check_static(hnet: Any, condition: Any) -> None:
    """A static hypernetwork takes no condition."""
    if condition is not None:
        raise ConditionError(
            f"`condition` is only for dynamic hypernetworks (built with `condition_dim=` or `num_conditions=`); "
            f"this {type(hnet).__name__} is static: call `materialize(hnet)`."
        )


def check_dynamic(hnet: Any, condition: Any) -> None:
    """A dynamic hypernetwork needs the condition whose weights to bake in."""
    if condition is None:
        raise ConditionError(
            f"materializing a dynamic hypernetwork needs the condition whose weights to bake in: "
            f"`hypernn.materialize(hnet, condition=c)`; {type(hnet).__name__} got none."
        )


def check_no_variables(hnet: Any, variables: Any, framework: str) -> None:
    """Only linen hypernetworks take a variable tree."""
    if variables is not None:
        raise OptionTypeError(
            f"`variables` is only for flax linen hypernetworks; a {framework} hypernetwork ({type(hnet).__name__}) "
            f"holds its own parameters: call `materialize(hnet)`."
        )


def dispatch_method(
    hypernetwork: Any,
    method: str,
    *,
    static_type: type,
    dynamic_type: type,
    framework: str,
    given: Any,
    variables: Any,
    condition: Any,
    generate_params_kwargs: Mapping[str, Any],
) -> Any:
    """``hypernetwork.materialize(...)`` or ``.summary(...)`` for the torch and NNX backends,
    after the checks they share: a hypernetwork (``given`` is what the user passed), no
    variable tree, a condition exactly when dynamic (``summary`` of a dynamic one may omit it)."""
    if not isinstance(hypernetwork, static_type):
        plain = ", a plain model (there is nothing to materialize)" if method == "materialize" else ""
        raise UnsupportedModelError(
            f"`hnet` must be a hypernetwork made by hypernn.hypernetize; got {type(given).__name__}{plain}."
        )
    check_no_variables(hypernetwork, variables, framework)
    if isinstance(hypernetwork, dynamic_type):
        if method == "materialize":
            check_dynamic(hypernetwork, condition)
        return getattr(hypernetwork, method)(condition=condition, **generate_params_kwargs)
    check_static(hypernetwork, condition)
    return getattr(hypernetwork, method)(**generate_params_kwargs)
