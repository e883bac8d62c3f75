"""Reuse a static hypernetwork's generated weights while nothing they depend on changes.

In ``eval()`` mode without autograd (``torch.no_grad()`` / ``torch.inference_mode()``) the
generated weights of a static hypernetwork are a pure function of its own parameters and
buffers, so repeated calls can reuse them. The cache key holds, for every tensor of the
hypernetwork outside :attr:`target_network`, its identity, version counter (bumped by every
in-place update: optimizer steps, ``load_state_dict``, ``nn.init``), device and dtype; any
change regenerates. Writes through ``tensor.data`` bypass version counters: after such an
edit, call :meth:`GeneratedWeightsCache.clear` (``hnet.clear_generated_cache()``).

    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> cache = GeneratedWeightsCache()
    >>> calls = []
    >>> def generate():
    ...     calls.append(1)
    ...     return layer.weight * 2
    >>> with torch.no_grad():
    ...     a = cache.get(layer.parameters(), layer.buffers(), generate)
    ...     b = cache.get(layer.parameters(), layer.buffers(), generate)
    >>> len(calls), a is b
    (1, True)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["GeneratedWeightsCache", "can_reuse"]


def can_reuse(module: nn.Module) -> bool:
    """Whether a call may reuse cached weights: eval mode, no autograd, no torch.func
    transform or compilation in progress."""
    return (
        not module.training
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


def _key(parameters: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor]) -> Optional[Tuple[Any, ...]]:
    key: List[Any] = [torch.is_inference_mode_enabled()]
    append = key.append
    try:
        for tensor in parameters:
            if type(tensor) is not nn.Parameter:
                return None  # swapped in by functional_call
            append((id(tensor), tensor._version, tensor.device, tensor.dtype))
        for tensor in buffers:
            append((id(tensor), tensor._version, tensor.device, tensor.dtype))
    except RuntimeError:  # an inference tensor: no version counter
        return None
    return tuple(key)


class GeneratedWeightsCache:
    """The last generated value and the state of the tensors it came from."""

    def __init__(self) -> None:
        self._key: Optional[Tuple[Any, ...]] = None
        self._value: Any = None

    def get(self, parameters: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor], generate: Callable[[], Any]) -> Any:
        """``generate()``'s cached value if the ``parameters`` and ``buffers`` it reads are
        unchanged, else a new one."""
        key = _key(parameters, buffers)
        if key is None:
            return generate()
        if key != self._key:
            self._value = None  # free the old weights before making new ones
            self._value, self._key = generate(), key
        return self._value

    def clear(self) -> None:
        """Forget the cached value (after editing parameters through ``.data``)."""
        self._key, self._value = None, None

    def __getstate__(self) -> Dict[str, Any]:
        return {"_key": None, "_value": None}

    def __deepcopy__(self, memo: Dict[int, Any]) -> "GeneratedWeightsCache":
        return GeneratedWeightsCache()
