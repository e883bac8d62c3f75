"""hyper-nn's torch helpers: chunk sizes, parameter counts, a functional target network.

    >>> import torch
    >>> from torch import nn
    >>> target = nn.Linear(3, 2)
    >>> count_params(target), get_weight_chunk_dims(count_params(target), 3)
    (8, 3)
    >>> wrapper = FunctionalParamVectorWrapper(target)
    >>> wrapper(torch.zeros(8), torch.ones(4, 3)).abs().sum().item()    # all-zero weights
    0.0
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..base import check_generated_length, get_weight_chunk_dims
from ..errors import GeneratedParamsTypeError, UnsupportedModelError
from ..transform.torch.introspect import param_specs

__all__ = ["FunctionalParamVectorWrapper", "count_params", "get_weight_chunk_dims"]


def _check_module(module: Any, argument: str) -> None:
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"`{argument}` must be a torch.nn.Module; got {type(module).__name__} ({module!r:.80}).")


def count_params(module: nn.Module, input_shape: Optional[Sequence[Any]] = None, inputs: Any = None) -> int:
    """Number of parameter values of ``module`` (tied parameters once, frozen ones included).

    ``input_shape`` and ``inputs`` are accepted for hyper-nn compatibility and unused: a
    torch module knows its parameters without running. Returns an ``int`` (hyper-nn
    returned a numpy integer of the same value).
    """
    _check_module(module, "module")
    return sum(p.numel() for p in module.parameters())


class FunctionalParamVectorWrapper(nn.Module):
    """hyper-nn's functional target network, on :func:`torch.func.functional_call`.

    ``wrapper(param_vector, *args, **kwargs)`` runs ``module(*args, **kwargs)`` with its
    parameters read from ``param_vector``: consecutive slices in ``named_parameters()``
    order (tied parameters once), each viewed to its shape; values past the last parameter
    are ignored. ``module`` is registered, so its buffers (BatchNorm statistics) follow
    ``.to()``, ``.train()``/``.eval()`` and ``state_dict``; it is never modified.

    Attributes:
        target_weight_shapes: ``{name: torch.Size}`` of the parameters, in vector order.
        num_target_parameters: the values a vector must hold at least.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        _check_module(module, "module")
        self.module = module
        specs = [spec for spec in param_specs(module) if spec.kind == "parameter"]
        self.target_weight_shapes: Dict[str, torch.Size] = {spec.name: torch.Size(spec.shape) for spec in specs}
        self._names = [spec.names for spec in specs]
        self.num_target_parameters = sum(spec.size for spec in specs)

    def forward(self, param_vector: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(param_vector, torch.Tensor):
            raise GeneratedParamsTypeError(f"`param_vector` must be a torch.Tensor; got {type(param_vector).__name__}.")
        check_generated_length(param_vector.shape[-1], self.num_target_parameters)
        sizes = [shape.numel() for shape in self.target_weight_shapes.values()]
        pieces = torch.split(param_vector[..., : self.num_target_parameters], sizes, dim=-1)
        tensors = {}
        for names, shape, piece in zip(self._names, self.target_weight_shapes.values(), pieces):
            for name in names:
                tensors[name] = piece.view(shape)
        return functional_call(self.module, tensors, args, kwargs, tie_weights=False, strict=False)
