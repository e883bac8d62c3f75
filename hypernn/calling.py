"""The call protocol every backend's hypernetwork shares (framework-free).

``hnet(*args, generated_params=None, has_aux=False, assert_parameter_shapes=True,
generate_params_kwargs=None, **kwargs)``: generate the weights unless given, run the
model with them, and return its output (or ``(output, generated_params, aux)``).

    >>> class Toy:
    ...     def generate_params(self):
    ...         return [1.0, 2.0], {"embedding": None}
    ...     def target_forward(self, x, *, generated_params, assert_parameter_shapes=True):
    ...         return x * sum(generated_params)
    >>> call_hypernetwork(Toy(), (2.0,), {}, has_aux=True)
    (6.0, [1.0, 2.0], {'embedding': None})
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .errors import OptionTypeError, ReservedArgumentError

__all__ = [
    "RESERVED_KEYWORDS",
    "call_arguments",
    "call_hypernetwork",
    "check_condition_keyword",
    "check_conditioning_kwargs",
    "check_reserved",
    "reject_generate_kwargs",
    "route_condition",
]

#: keywords a hypernetwork's call takes for itself
RESERVED_KEYWORDS = ("generated_params", "has_aux", "assert_parameter_shapes", "generate_params_kwargs")


def call_arguments(function: Callable[..., Any]) -> Tuple[str, ...]:
    """Names ``function`` takes explicitly (not through ``*args``/``**kwargs``)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature take nothing by name
        return ()
    return tuple(n for n, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check_reserved(function: Callable[..., Any], owner: str, reserved: Sequence[str] = RESERVED_KEYWORDS) -> None:
    """Raise :class:`ReservedArgumentError` if the model's call (``owner``, e.g.
    ``"MLP.forward"``) takes a keyword the hypernetwork's call reserves."""
    taken = [n for n in call_arguments(function) if n in reserved]
    if taken:
        raise ReservedArgumentError(
            f"{owner} takes {taken}, which the hypernetwork's call reserves ({', '.join(reserved)}); "
            f"rename that argument of the model."
        )


def reject_generate_kwargs(hypernetwork_name: str, kwargs: Mapping[str, Any]) -> None:
    """A static hypernetwork's ``generate_params`` takes no arguments."""
    if kwargs:
        raise OptionTypeError(
            f"{hypernetwork_name}.generate_params takes no arguments (a static hypernetwork); "
            f"got `generate_params_kwargs` {sorted(kwargs)}."
        )


def call_hypernetwork(
    hnet: Any,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
    *,
    generated_params: Any = None,
    has_aux: bool = False,
    assert_parameter_shapes: bool = True,
    generate_params_kwargs: Optional[Mapping[str, Any]] = None,
) -> Any:
    """Generate (unless ``generated_params`` is given) and run; ``aux`` is ``{}`` when given."""
    aux: Dict[str, Any] = {}
    if generated_params is None:
        generated_params, aux = hnet.generate_params(**(generate_params_kwargs or {}))
    output = hnet.target_forward(
        *args, generated_params=generated_params, assert_parameter_shapes=assert_parameter_shapes, **kwargs
    )
    return (output, generated_params, aux) if has_aux else output


def check_condition_keyword(function: Callable[..., Any], owner: str, condition_keyword: bool) -> None:
    """A dynamic hypernetwork's call takes ``condition=``: refuse a model (``owner``, e.g.
    ``"MLP.forward"``) that takes it too, unless ``condition_keyword=False``."""
    if condition_keyword and "condition" in call_arguments(function):
        raise ReservedArgumentError(
            f"{owner} already takes `condition`, which a dynamic hypernetwork's call takes for itself. "
            f"Hypernetize with `condition_keyword=False`: then `hnet(x, condition=...)` passes `condition` to the "
            f"model, and the hypernetwork's condition goes in `generate_params_kwargs={{'condition': c}}`."
        )


def route_condition(
    condition: Any, generate_params_kwargs: Optional[Mapping[str, Any]], kwargs: Dict[str, Any], condition_keyword: bool
) -> Dict[str, Any]:
    """Where ``hnet(..., condition=c)`` goes: to ``generate_params`` (the default), or to the
    model's own ``condition`` argument (``condition_keyword=False``, then ``kwargs`` gets it).
    Returns the keyword arguments for ``generate_params``.

        >>> route_condition(1.0, None, {}, True)
        {'condition': 1.0}
    """
    generate_kwargs = dict(generate_params_kwargs or {})
    if condition is None:
        return generate_kwargs
    if not condition_keyword:
        kwargs["condition"] = condition
    elif "condition" in generate_kwargs:
        raise OptionTypeError("pass the condition once: `condition=` or `generate_params_kwargs['condition']`.")
    else:
        generate_kwargs["condition"] = condition
    return generate_kwargs


def check_conditioning_kwargs(accepted: Any, module_name: str, kwargs: Mapping[str, Any]) -> None:
    """A dynamic hypernetwork's ``generate_params_kwargs`` beyond ``condition`` go to its
    conditioning module (``module_name``), which takes the names in ``accepted``.

        >>> check_conditioning_kwargs({"hidden_state"}, "Recurrent", {"hidden": 1})
        Traceback (most recent call last):
        ...
        hypernn.errors.OptionTypeError: `generate_params_kwargs` ['hidden'] are not taken by Recurrent; it takes condition, hidden_state.
    """
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise OptionTypeError(
            f"`generate_params_kwargs` {unknown} are not taken by {module_name}; "
            f"it takes condition{''.join(', ' + a for a in sorted(accepted))}."
        )
