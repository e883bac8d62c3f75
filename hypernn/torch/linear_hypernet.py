"""hyper-nn 0.2.2's ``TorchLinearHyperNetwork``: the linear hypernetwork under its own name.

In hyper-nn 0.2.2 the embedding/linear-generator arguments moved from
``TorchHyperNetwork`` to this class; hypernn's ``TorchHyperNetwork`` takes them too, so
code of both generations runs.

    >>> import torch
    >>> from torch import nn
    >>> hnet = TorchLinearHyperNetwork.from_target(nn.Linear(3, 2), embedding_dim=4, num_embeddings=3)
    >>> hnet.weight_chunk_dim, hnet(torch.ones(5, 3)).shape
    (3, torch.Size([5, 2]))
"""

from __future__ import annotations

from .hypernet import TorchHyperNetwork

__all__ = ["TorchLinearHyperNetwork"]


class TorchLinearHyperNetwork(TorchHyperNetwork):
    """An ``nn.Embedding`` and an ``nn.Linear`` generating every parameter of the target
    (see :class:`~hypernn.torch.hypernet.TorchHyperNetwork` for the arguments)."""
