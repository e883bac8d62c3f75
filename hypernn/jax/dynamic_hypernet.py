"""hyper-nn's dynamic JAX hypernetwork (module path kept: hyper-nn's README imports
``JaxHyperNetwork`` from here).

    >>> from hypernn.jax.dynamic_hypernet import JaxHyperNetwork
    >>> JaxHyperNetwork.__module__
    'hypernn.jax.hypernet'
"""

from __future__ import annotations

from .hypernet import JaxHyperNetwork as JaxHyperNetwork

__all__ = ["JaxHyperNetwork"]
