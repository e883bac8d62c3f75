"""hyper-nn 0.2.2's ``JaxLinearHyperNetwork``: the linear hypernetwork under its own name.

In hyper-nn 0.2.2 the embedding/linear-generator fields moved from ``JaxHyperNetwork`` to
this class; hypernn's ``JaxHyperNetwork`` has them too, so code of both generations runs.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> hnet = JaxLinearHyperNetwork.from_target(nn.Dense(2), embedding_dim=4, num_embeddings=3, inputs=jnp.ones((1, 3)))
    >>> variables = hnet.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> hnet.weight_chunk_dim, hnet.apply(variables, jnp.ones((5, 3))).shape
    (3, (5, 2))
"""

from __future__ import annotations

from .hypernet import JaxHyperNetwork

__all__ = ["JaxLinearHyperNetwork"]


class JaxLinearHyperNetwork(JaxHyperNetwork):
    """An ``nn.Embed`` and an ``nn.Dense`` generating every ``params`` value of the target
    (see :class:`~hypernn.jax.hypernet.JaxHyperNetwork` for the fields)."""
