"""The hyper-nn 0.2 class API: the abstract :class:`HyperNetwork` and its framework-free rules.

hyper-nn (hypernn's predecessor) represents a hypernetwork by two modules, an
``embedding_module`` and a ``weight_generator``, and a call that generates a flat parameter
vector and runs the target network with it::

    static                                   dynamic
    ------                                   -------
    embedding_module()   (num_embeddings x   embedding_module(x, hidden_state)   (one set of
          |               embedding_dim)           |                             embeddings per input)
    weight_generator     (-> num_embeddings  weight_generator
          |               x weight_chunk_dim)      |
    flat vector ---> target_network(x)       flat vector(s) ---> target_network(x)

:mod:`hypernn.torch` and :mod:`hypernn.jax` implement it as thin layers over
:func:`hypernn.hypernetize`'s backends; this module holds what both share: the sizes
hyper-nn computes, how ``forward`` calls ``generate_params``, and the length check.

    >>> get_weight_chunk_dims(4192, 32)      # ceil(4192 / 32): hyper-nn's weight_chunk_dim
    131
    >>> hypernetwork_sizes(counted=10, num_target_parameters=None, num_embeddings=4, weight_chunk_dim=None)
    (10, 3)
"""

from __future__ import annotations

import abc
import inspect
import math
import operator
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ConfigurationError, GeneratedParamsError, GeneratorOutputError, OptionTypeError
from .options import check_positive_int

__all__ = [
    "HyperNetwork",
    "call_generate_params",
    "check_generated_length",
    "get_weight_chunk_dims",
    "hypernetwork_sizes",
    "run_hypernetwork",
]


class HyperNetwork(metaclass=abc.ABCMeta):
    """What every hyper-nn hypernetwork provides (torch and JAX alike).

    ``forward(*args, generated_params=None, has_aux=False, **kwargs)`` generates the target
    network's parameters (unless given) and runs the target on ``args``/``kwargs``; with
    ``has_aux=True`` it returns ``(output, generated_params, aux)``.
    """

    @classmethod
    @abc.abstractmethod
    def count_params(cls, target: Any, target_input_shape: Any = None) -> int:
        """Number of parameters of ``target``."""

    @classmethod
    @abc.abstractmethod
    def from_target(cls, target: Any, *args: Any, **kwargs: Any) -> "HyperNetwork":
        """Build a hypernetwork for ``target``, computing its sizes."""

    @abc.abstractmethod
    def generate_params(self, inp: Any = None, *args: Any, **kwargs: Any) -> Tuple[Any, Dict[str, Any]]:
        """Return ``(flat parameter vector, aux dict)``."""

    @abc.abstractmethod
    def forward(self, *args: Any, generated_params: Any = None, has_aux: bool = False, **kwargs: Any) -> Any:
        """Generate the parameters (unless given) and run the target network."""


# ---------------------------------------------------------------- sizes


def get_weight_chunk_dims(num_target_parameters: int, num_embeddings: int) -> int:
    """hyper-nn's chunk size: ``ceil(num_target_parameters / num_embeddings)``.

    The generator emits ``num_embeddings * weight_chunk_dim >= num_target_parameters``
    values; the surplus at the end is unused (hyper-nn's README says ``//``; its code, and
    this function, use the ceiling).

        >>> get_weight_chunk_dims(10, 4), get_weight_chunk_dims(7, 10)
        (3, 1)
    """
    return math.ceil(num_target_parameters / num_embeddings)


def _count(value: Any, argument: str) -> int:
    """A non-negative integer (numpy integers too, as hyper-nn's ``count_params`` returned)."""
    try:
        number = operator.index(value)
    except TypeError:
        raise OptionTypeError(f"`{argument}` must be an int or None; got {value!r} of type {type(value).__name__}.") from None
    if isinstance(value, bool) or number < 0:
        raise ConfigurationError(f"`{argument}` must be a non-negative int; got {value!r}.")
    return number


def hypernetwork_sizes(
    *, counted: int, num_target_parameters: Any, num_embeddings: Any, weight_chunk_dim: Any
) -> Tuple[int, int]:
    """hyper-nn's ``(num_target_parameters, weight_chunk_dim)``, checked.

    ``counted`` is the number of values the target network needs; ``num_target_parameters``
    (default: ``counted``) may exceed it, and sizes the chunks as in hyper-nn.

        >>> hypernetwork_sizes(counted=10, num_target_parameters=12, num_embeddings=4, weight_chunk_dim=None)
        (12, 3)
        >>> hypernetwork_sizes(counted=10, num_target_parameters=5, num_embeddings=4, weight_chunk_dim=None)
        Traceback (most recent call last):
        ...
        hypernn.errors.ConfigurationError: `num_target_parameters`=5 is less than the 10 parameter values of the target network; leave it unset to have them counted.
    """
    check_positive_int(num_embeddings, "num_embeddings")
    check_positive_int(weight_chunk_dim, "weight_chunk_dim", optional=True)
    total = counted if num_target_parameters is None else _count(num_target_parameters, "num_target_parameters")
    if total < counted:
        raise ConfigurationError(
            f"`num_target_parameters`={total} is less than the {counted} parameter values of the target network; "
            f"leave it unset to have them counted."
        )
    chunk = get_weight_chunk_dims(total, num_embeddings) if weight_chunk_dim is None else weight_chunk_dim
    if chunk * num_embeddings < total:
        raise ConfigurationError(
            f"`num_embeddings`={num_embeddings} chunks of `weight_chunk_dim`={chunk} hold {chunk * num_embeddings} values, "
            f"fewer than the {total} target parameters; leave `weight_chunk_dim` unset to use "
            f"ceil({total} / {num_embeddings}) = {get_weight_chunk_dims(total, num_embeddings)}."
        )
    return total, chunk


def check_generated_length(length: int, required: int) -> None:
    """hyper-nn's parameter check, as an error with a message: a generated vector needs
    at least ``required`` values (the surplus of the last chunk is ignored).

        >>> check_generated_length(3, 4)
        Traceback (most recent call last):
        ...
        hypernn.errors.GeneratedParamsError: `generated_params` has 3 values; the target network needs at least 4 (num_target_parameters).
    """
    if length < required:
        raise GeneratedParamsError(
            f"`generated_params` has {length} values; the target network needs at least {required} (num_target_parameters)."
        )


# ---------------------------------------------------------------- the call


_SIGNATURES: "weakref.WeakKeyDictionary[Callable[..., Any], Optional[inspect.Signature]]" = weakref.WeakKeyDictionary()


def _signature(method: Callable[..., Any]) -> Optional[inspect.Signature]:
    """The signature of a (bound) method without ``self``, cached per function."""
    function = getattr(method, "__func__", None)
    if function is None:
        try:
            return inspect.signature(method)
        except (TypeError, ValueError):
            return None
    if function not in _SIGNATURES:
        try:
            full = inspect.signature(function)
            _SIGNATURES[function] = full.replace(parameters=list(full.parameters.values())[1:])
        except (TypeError, ValueError):
            _SIGNATURES[function] = None
    return _SIGNATURES[function]


def _binds(signature: Optional[inspect.Signature], args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    if signature is None:
        return True
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def call_generate_params(
    generate_params: Callable[..., Any],
    args: Tuple[Any, ...],
    kwargs: Mapping[str, Any],
    generate_params_kwargs: Optional[Mapping[str, Any]],
) -> Tuple[Any, Dict[str, Any]]:
    """Call ``generate_params`` as ``forward`` does, and check it returns a pair.

    The target's inputs reach ``generate_params`` too, as hyper-nn's README documents
    (a dynamic hypernetwork conditions on them): the first of these calls that its
    signature accepts is made:

    1. ``generate_params(*args, **kwargs, **generate_params_kwargs)``
    2. ``generate_params(*args, **generate_params_kwargs)``
    3. ``generate_params(**generate_params_kwargs)`` (hyper-nn 0.2.2's call)

        >>> def generate_params(x, scale=1.0):
        ...     return [x * scale], {}
        >>> call_generate_params(generate_params, (2.0,), {}, {"scale": 3.0})
        ([6.0], {})
    """
    extra = dict(generate_params_kwargs or {})
    signature = _signature(generate_params)
    candidates = [(args, extra), ((), extra)]
    if not set(kwargs) & set(extra):
        candidates.insert(0, (args, {**kwargs, **extra}))
    for call_args, call_kwargs in candidates:
        if _binds(signature, call_args, call_kwargs):
            return _checked_pair(generate_params(*call_args, **call_kwargs))
    raise OptionTypeError(
        f"generate_params{signature} accepts neither the target's inputs ({len(args)} positional, keywords "
        f"{sorted(kwargs)}) nor only `generate_params_kwargs` {sorted(extra)}; pass what it needs in "
        f"`generate_params_kwargs`."
    )


def _checked_pair(result: Any) -> Tuple[Any, Dict[str, Any]]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise GeneratorOutputError(
            f"generate_params must return a pair (generated_params, aux_dict); it returned {type(result).__name__}."
        )
    return result


def run_hypernetwork(
    hnet: Any,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
    *,
    generated_params: Any = None,
    has_aux: bool = False,
    assert_parameter_shapes: bool = True,
    generate_params_kwargs: Optional[Mapping[str, Any]] = None,
) -> Any:
    """hyper-nn's ``forward``: generate (unless given; see :func:`call_generate_params`),
    run ``hnet.target_forward``, return the output or ``(output, generated_params, aux)``
    (``aux`` is ``{}`` when ``generated_params`` was given).

        >>> class Toy:
        ...     def generate_params(self, *inputs):
        ...         return [len(inputs)], {"embedding": None}
        ...     def target_forward(self, x, *, generated_params, assert_parameter_shapes=True):
        ...         return x + generated_params[0]
        >>> run_hypernetwork(Toy(), (10,), {}, has_aux=True)
        (11, [1], {'embedding': None})
    """
    aux: Dict[str, Any] = {}
    if generated_params is None:
        generated_params, aux = call_generate_params(hnet.generate_params, args, kwargs, generate_params_kwargs)
    output = hnet.target_forward(
        *args, generated_params=generated_params, assert_parameter_shapes=assert_parameter_shapes, **kwargs
    )
    return (output, generated_params, aux) if has_aux else output
