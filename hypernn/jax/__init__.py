"""The hyper-nn 0.2 JAX (flax linen) API, on hypernn's linen backend (imports jax and
flax, never torch).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn.jax import JaxHyperNetwork
    >>> hnet = JaxHyperNetwork.from_target(nn.Dense(8), embedding_dim=4, num_embeddings=8, inputs=jnp.zeros((1, 32)))
    >>> variables = hnet.init(jax.random.key(0), jnp.zeros((1, 32)))
    >>> hnet.apply(variables, jnp.zeros((1, 32))).shape
    (1, 8)
"""

from .dynamic_hypernet import JaxDynamicEmbeddingModule as JaxDynamicEmbeddingModule
from .dynamic_hypernet import JaxDynamicHyperNetwork as JaxDynamicHyperNetwork
from .hypernet import JaxHyperNetwork as JaxHyperNetwork
from .linear_hypernet import JaxLinearHyperNetwork as JaxLinearHyperNetwork

__all__ = ["JaxDynamicEmbeddingModule", "JaxDynamicHyperNetwork", "JaxHyperNetwork", "JaxLinearHyperNetwork"]
