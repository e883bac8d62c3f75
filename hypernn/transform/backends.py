"""Find the backend for a model without importing any framework.

A model can only be a ``torch.nn.Module`` if torch is already imported, so detection
looks at ``sys.modules`` and never imports a framework itself.

    >>> detect_backend(3) is None
    True
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Optional

from ..errors import MissingDependencyError, UnsupportedModelError

__all__ = ["backend_for", "detect_backend", "load_backend"]

#: backend name -> (module that must be imported, attribute path of its base class, pip extra)
_BASES = {
    "torch": ("torch", "nn.Module", "torch"),
    "nnx": ("flax.nnx", "Module", "jax"),
    "linen": ("flax.linen", "Module", "jax"),
}


def _base_class(framework: str, path: str) -> Optional[type]:
    obj: Any = sys.modules.get(framework)
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def detect_backend(obj: Any) -> Optional[str]:
    """``"torch"``, ``"nnx"`` or ``"linen"`` for a module or module class of that kind;
    ``None`` for anything else."""
    for name, (framework, path, _) in _BASES.items():
        base = _base_class(framework, path)
        if base is None:
            continue
        if isinstance(obj, base) or (isinstance(obj, type) and issubclass(obj, base)):
            return name
    return None


def load_backend(name: str) -> ModuleType:
    """Import ``hypernn.transform.<name>``, turning a missing framework into a clear error."""
    try:
        return importlib.import_module(f"hypernn.transform.{name}")
    except ModuleNotFoundError as err:
        extra = _BASES[name][2]
        raise MissingDependencyError(
            f"the {name} backend needs {err.name!r}, which is not installed: pip install 'hypernn[{extra}]'."
        ) from err


def backend_for(obj: Any, argument: str = "model") -> ModuleType:
    """The backend module for ``obj``, or :class:`UnsupportedModelError`."""
    name = detect_backend(obj)
    if name is None:
        shown = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise UnsupportedModelError(
            f"`{argument}` must be a torch.nn.Module, flax.linen.Module or flax.nnx.Module (instance or "
            f"subclass); got {shown} ({obj!r:.80})."
        )
    return load_backend(name)
