"""The options of :func:`hypernn.hypernetize`, validated once, shared by every backend.

    >>> opts = HypernetizeOptions(embedding_dim=8, num_embeddings=4)
    >>> opts.layout, opts.targets
    ('global', None)
    >>> HypernetizeOptions(embedding_dim=0, num_embeddings=4)
    Traceback (most recent call last):
    ...
    hypernn.errors.ConfigurationError: `embedding_dim` must be a positive int; got 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ConfigurationError, OptionTypeError
from .conditioning import CONDITIONING_SPECS
from .factories import MLPGeneratorSpec
from .layout import LAYOUTS
from .selection import Selector, check_selector

__all__ = ["BACKEND_SPECIFIC", "DYNAMIC_OPTIONS", "HypernetizeOptions", "check_positive_int"]

#: options only some backends use -> the models they are for
BACKEND_SPECIFIC = {
    "example_inputs": "flax linen", "init_kwargs": "flax linen", "variables": "flax linen", "rngs": "flax NNX",
}  # fmt: skip
DYNAMIC_OPTIONS = ("condition_dim", "num_conditions", "condition_factory", "condition_keyword")


def check_positive_int(value: Any, argument: str, *, optional: bool = False) -> None:
    """Raise unless ``value`` is a positive ``int`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a positive int or None" if optional else "a positive int"
        raise OptionTypeError(f"`{argument}` must be {kind}; got {value!r} of type {type(value).__name__}.")
    if value <= 0:
        raise ConfigurationError(f"`{argument}` must be a positive int; got {value}.")


def _check_factory(value: Any, argument: str) -> None:
    if value is not None and not callable(value) and not isinstance(value, MLPGeneratorSpec):
        raise OptionTypeError(
            f"`{argument}` must be a callable (a factory), a spec such as `hypernn.mlp_generator(...)`, or None; "
            f"got {value!r}."
        )


@dataclasses.dataclass(frozen=True)
class HypernetizeOptions:
    """Everything :func:`hypernn.hypernetize` takes besides the model.

    Attributes:
        embedding_dim: width of each chunk embedding.
        num_embeddings: number of chunks (see :mod:`hypernn.layout`).
        chunk_dim: values per chunk; computed when unset.
        layout: ``"global"`` (hyper-nn's) or ``"per_tensor"``.
        targets, exclude: which parameters to generate (see :mod:`hypernn.selection`).
        embedding_factory: ``(num_embeddings, embedding_dim) -> module``.
        generator_factory: ``(embedding_dim, chunk_dim) -> module``.
        inplace: hypernetize the given model object itself (its selected parameters are
            removed from it) instead of a deep copy (torch, NNX).
        example_inputs: flax linen only: positional arguments that trace the model's
            variable structure (``module.init(key, *example_inputs, **init_kwargs)``).
        init_kwargs: flax linen only: keyword arguments for that trace (``train=False``).
        variables: flax linen only: an existing (e.g. pretrained) variable tree; gives the
            structure and the initial values of unselected params and other collections.
        rngs: flax NNX only: an ``nnx.Rngs`` for the hypernetwork's own modules.
        condition_dim: makes a dynamic hypernetwork: weights are generated from a
            condition vector of this width, per sample (see :mod:`hypernn.conditioning`).
        num_conditions: makes a dynamic hypernetwork conditioned on integer ids
            (``0..num_conditions-1``, e.g. task ids) through learned condition embeddings
            (``condition_dim`` wide; default ``embedding_dim``).
        condition_factory: how the condition enters: a spec from
            :mod:`hypernn.conditioning` (default :func:`~hypernn.conditioning.film`) or
            ``(condition_dim, num_embeddings, embedding_dim) -> module``.
        condition_keyword: whether the hypernetwork's call takes ``condition=`` (default);
            with ``False`` the condition goes only through
            ``generate_params_kwargs={"condition": c}``, leaving ``condition`` to the model.
    """

    embedding_dim: int
    num_embeddings: Optional[int] = None
    chunk_dim: Optional[int] = None
    layout: str = "global"
    targets: Selector = None
    exclude: Selector = None
    embedding_factory: Optional[Callable[[int, int], Any]] = None
    generator_factory: Optional[Callable[[int, int], Any]] = None
    inplace: bool = False
    example_inputs: Optional[Tuple[Any, ...]] = None
    init_kwargs: Optional[Mapping[str, Any]] = None
    variables: Any = None
    rngs: Any = None
    condition_dim: Optional[int] = None
    num_conditions: Optional[int] = None
    condition_factory: Any = None
    condition_keyword: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.embedding_dim, "embedding_dim")
        check_positive_int(self.num_embeddings, "num_embeddings", optional=True)
        check_positive_int(self.chunk_dim, "chunk_dim", optional=True)
        if self.layout not in LAYOUTS:
            raise ConfigurationError(f"`layout` must be one of {LAYOUTS}; got {self.layout!r}.")
        if self.num_embeddings is None and self.chunk_dim is None:
            raise ConfigurationError(
                "pass `num_embeddings` (the number of generated chunks) or `chunk_dim` (values per chunk) "
                "to size the chunk layout."
            )
        check_selector(self.targets, "targets")
        check_selector(self.exclude, "exclude")
        _check_factory(self.embedding_factory, "embedding_factory")
        _check_factory(self.generator_factory, "generator_factory")
        if not isinstance(self.inplace, bool):
            raise OptionTypeError(f"`inplace` must be a bool; got {self.inplace!r}.")
        if self.example_inputs is not None and not isinstance(self.example_inputs, (tuple, list)):
            raise OptionTypeError(
                f"`example_inputs` must be a tuple of positional arguments, e.g. `example_inputs=(x,)`; "
                f"got {type(self.example_inputs).__name__}."
            )
        if self.init_kwargs is not None and not isinstance(self.init_kwargs, Mapping):
            raise OptionTypeError(f"`init_kwargs` must be a dict of keyword arguments; got {type(self.init_kwargs).__name__}.")
        self._check_dynamic()

    def _check_dynamic(self) -> None:
        check_positive_int(self.condition_dim, "condition_dim", optional=True)
        check_positive_int(self.num_conditions, "num_conditions", optional=True)
        if self.condition_factory is not None:
            if not self.dynamic:
                raise ConfigurationError("`condition_factory` needs `condition_dim=` or `num_conditions=` (a dynamic hypernetwork).")
            if not callable(self.condition_factory) and not isinstance(self.condition_factory, CONDITIONING_SPECS):
                raise OptionTypeError(
                    f"`condition_factory` must be a spec from hypernn.conditioning (film(), concat(), recurrent()) or a "
                    f"callable (condition_dim, num_embeddings, embedding_dim) -> module; got {self.condition_factory!r}."
                )
        if not isinstance(self.condition_keyword, bool):
            raise OptionTypeError(f"`condition_keyword` must be a bool; got {self.condition_keyword!r}.")

    @property
    def dynamic(self) -> bool:
        """Whether these options make a dynamic (conditioned) hypernetwork."""
        return self.condition_dim is not None or self.num_conditions is not None

    def reject_unused(self, backend: str, used: Tuple[str, ...] = ()) -> None:
        """Raise if a backend-specific option that ``backend`` does not use was given."""
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name, owner in BACKEND_SPECIFIC.items():
            if name not in used and getattr(self, name) != defaults[name]:
                raise OptionTypeError(f"`{name}` is only used for {owner} models so far; remove it for a {backend} model.")

    def as_kwargs(self) -> Dict[str, Any]:
        """The options as keyword arguments (values kept as they are, not copied)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def common_kwargs(self) -> Dict[str, Any]:
        """The options every backend takes (without the linen/NNX-specific ones and the
        dynamic ones, see :meth:`dynamic_kwargs`)."""
        kwargs = self.as_kwargs()
        for name in (*BACKEND_SPECIFIC, *DYNAMIC_OPTIONS):
            del kwargs[name]
        return kwargs

    def dynamic_kwargs(self) -> Dict[str, Any]:
        """The options of dynamic hypernetworks (:data:`DYNAMIC_OPTIONS`)."""
        return {name: getattr(self, name) for name in DYNAMIC_OPTIONS}
