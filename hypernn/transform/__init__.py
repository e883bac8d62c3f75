"""``hypernetize``: turn a model (or a model class) into a hypernetwork.

This module imports no framework; the backend is chosen from the model's type.

    >>> transform = hypernetize(embedding_dim=4, num_embeddings=8)
    >>> transform
    Hypernetize(embedding_dim=4, num_embeddings=8)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import OptionTypeError
from ..options import HypernetizeOptions
from ..selection import Selection, Selector
from ..selection import select as _select
from .backends import backend_for

__all__ = ["Hypernetize", "hypernetize", "select"]

_OPTION_NAMES = tuple(field.name for field in dataclasses.fields(HypernetizeOptions))


class Hypernetize:
    """A reusable transform holding validated options; call it on a model or a class.

    On a model instance it returns the backend's hypernetwork module; on a model class it
    returns a class whose instances are hypernetworks (the decorator form).
    """

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(_OPTION_NAMES))
        if unknown:
            raise OptionTypeError(f"hypernetize got unknown options {unknown}; valid options: {', '.join(_OPTION_NAMES)}.")
        if "embedding_dim" not in options:
            raise OptionTypeError("hypernetize needs `embedding_dim=` (the width of each chunk embedding).")
        self.options = HypernetizeOptions(**options)

    def __call__(self, model: Any) -> Any:
        backend = backend_for(model)
        if isinstance(model, type):
            return backend.decorate(model, self.options)
        return backend.hypernetize(model, options=self.options)

    def __repr__(self) -> str:
        defaults = HypernetizeOptions(embedding_dim=1, num_embeddings=1)
        shown = [
            f"{name}={getattr(self.options, name)!r}"
            for name in _OPTION_NAMES
            if name in ("embedding_dim",) or getattr(self.options, name) != getattr(defaults, name)
        ]
        return f"Hypernetize({', '.join(shown)})"


def hypernetize(model: Any = None, /, **options: Any) -> Any:
    """Turn ``model`` into a hypernetwork that generates its selected parameters.

    Args:
        model: a ``torch.nn.Module``, ``flax.linen.Module`` or ``flax.nnx.Module``
            (instance or subclass). Omit it to get a reusable :class:`Hypernetize`
            transform, usable as a class decorator.
        embedding_dim: width of each chunk embedding (required).
        num_embeddings: number of generated chunks (one embedding each); with
            ``layout="per_tensor"`` an upper bound: the smallest ``chunk_dim`` whose chunk
            count fits is used, and ``hnet.num_embeddings`` tells the count.
        chunk_dim: values per chunk; computed from ``num_embeddings`` when unset.
        layout: ``"global"`` (default, hyper-nn's: chunks of ``ceil(P / num_embeddings)``
            over all selected values end to end) or ``"per_tensor"`` (no chunk spans two
            tensors).
        targets, exclude: which parameters to generate; see :mod:`hypernn.selection`.
            Default: every floating-point parameter.
        embedding_factory: ``(num_embeddings, embedding_dim) -> module``; default an
            embedding table.
        generator_factory: ``(embedding_dim, chunk_dim) -> module``; default a linear layer.
        inplace: use the model object itself (removing the selected parameters from it)
            instead of a deep copy (torch, NNX). Default ``False``: the model is left
            unchanged.
        example_inputs, init_kwargs, variables: flax linen only: how to learn the model's
            variable structure (``module.init(key, *example_inputs, **init_kwargs)``, or
            an existing variable tree whose values also initialise the unselected
            params and other collections). Without them it is traced at the first
            ``init``/``apply``.
        rngs: flax NNX only (required there): ``nnx.Rngs`` for the hypernetwork's modules.
        condition_dim, num_conditions, condition_factory, condition_keyword: make a dynamic
            hypernetwork (see :class:`~hypernn.options.HypernetizeOptions`).
        init: where generated tensors start: ``"hyperfan"`` (default: each at the mean and
            std of its own layer's default init) or ``"default"`` (hyper-nn's plain
            generator output); see :mod:`hypernn.init`.
        warm_start: start at the model's current weights (``hnet(x) == model(x)`` at step
            0; linen: from ``variables=``). Default: ``True`` with ``low_rank``, else ``False``.
        low_rank: generate rank-``low_rank`` factors of a delta for each selected weight of a
            Linear/Conv (torch) or Dense/Conv (flax) layer, ``W0`` frozen (see
            :mod:`hypernn.lowrank`); ``low_rank_scale`` multiplies the delta (default 1).

    Returns:
        A module of the model's framework whose call takes what the model takes.

    Example::

        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, targets=["0"])
        >>> hnet(torch.randn(5, 4)).shape, hnet.selection.names
        (torch.Size([5, 2]), ('0.weight', '0.bias'))
    """
    transform = Hypernetize(**options)
    return transform if model is None else transform(model)


def select(
    model: Any, *, targets: Selector = None, exclude: Selector = None, **structure: Any
) -> Selection:
    """Dry run: what ``targets``/``exclude`` would pick from ``model``; builds nothing.

    ``print(select(model, targets=...))`` shows a table of names, shapes and sizes. A
    flax linen module also needs ``example_inputs=`` (and ``init_kwargs=``) or
    ``variables=``, as for :func:`hypernetize`.

        >>> import torch.nn as nn
        >>> select(nn.Sequential(nn.Linear(2, 3)), targets=["weight"]).names
        ('0.weight',)
    """
    backend = backend_for(model)
    unknown = sorted(set(structure) - {"example_inputs", "init_kwargs", "variables"})
    if unknown:
        raise OptionTypeError(f"select got unknown options {unknown}; it takes targets, exclude and, for linen, "
                              f"example_inputs, init_kwargs, variables.")  # fmt: skip
    if structure and backend.__name__ != "hypernn.transform.linen":
        raise OptionTypeError(f"{sorted(structure)} are only used for flax linen models.")
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    return _select(backend.param_specs(model, **structure), targets=targets, exclude=exclude, model_name=name)
