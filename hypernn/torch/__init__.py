"""The hyper-nn 0.2 torch API, on hypernn's torch backend (imports torch, never jax).

    >>> import torch
    >>> from torch import nn
    >>> from hypernn.torch import TorchHyperNetwork
    >>> hnet = TorchHyperNetwork.from_target(nn.Linear(32, 8), embedding_dim=4, num_embeddings=8)
    >>> hnet(torch.zeros(1, 32)).shape
    torch.Size([1, 8])
"""

from .dynamic_hypernet import TorchDynamicEmbeddingModule as TorchDynamicEmbeddingModule
from .dynamic_hypernet import TorchDynamicHyperNetwork as TorchDynamicHyperNetwork
from .hypernet import TorchHyperNetwork as TorchHyperNetwork
from .linear_hypernet import TorchLinearHyperNetwork as TorchLinearHyperNetwork

__all__ = ["TorchDynamicEmbeddingModule", "TorchDynamicHyperNetwork", "TorchHyperNetwork", "TorchLinearHyperNetwork"]
