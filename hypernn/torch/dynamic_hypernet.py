"""hyper-nn's dynamic torch hypernetwork: weights generated from the input, now per sample.

An RNN cell over the input ``x`` keeps one hidden unit per chunk; its state gates learned
chunk embeddings (Ha et al., 2016), which a linear generator turns into the target's
weights. Where hyper-nn took one sample per call, a batch ``x`` of shape ``(B, input_dim)``
now generates one weight set per sample and runs the target on sample ``i`` with weight
set ``i`` (batched, no Python loop: :class:`hypernn.DynamicHypernetizedModule`); a batch
of one behaves exactly as in hyper-nn (one weight vector).

    >>> import torch
    >>> from torch import nn
    >>> target = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> hnet = TorchDynamicHyperNetwork.from_target(target, input_dim=8, embedding_dim=4, num_embeddings=8)
    >>> x = torch.randn(5, 8)
    >>> output, generated_params, aux = hnet(x, has_aux=True)
    >>> output.shape, generated_params.shape, aux["hidden_state"].shape
    (torch.Size([5, 4]), torch.Size([5, 216]), torch.Size([5, 8]))
    >>> torch.allclose(hnet(x[2:3]), output[2:3], atol=1e-6)     # sample 2 alone: the same
    True
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConditionError, ConditionTypeError
from ..options import HypernetizeOptions, check_positive_int
from ..transform.torch.dynamic import DynamicHypernetizedModule
from ..transform.torch.module import HypernetizedModule
from ..transform.torch.per_sample import PerSampleRunner
from .hypernet import TorchHyperNetwork

__all__ = ["TorchDynamicEmbeddingModule", "TorchDynamicHyperNetwork"]


class TorchDynamicEmbeddingModule(nn.Module):
    """hyper-nn's dynamic embedding: ``h = RNNCell(x, h)``, then ``embedding * h`` per chunk.

    ``forward(x, hidden_state=None)`` takes ``x`` of shape ``(B, input_dim)`` and a state
    of shape ``(1, num_embeddings)`` (shared) or ``(B, num_embeddings)``; it returns
    ``(embedding, h)``: for ``B == 1`` hyper-nn's ``(num_embeddings, embedding_dim)``
    embedding and ``(1, num_embeddings)`` state, else ``(B, num_embeddings, embedding_dim)``
    and ``(B, num_embeddings)``.

        >>> module = TorchDynamicEmbeddingModule(input_dim=3, embedding_dim=2, num_embeddings=4)
        >>> [t.shape for t in module(torch.randn(1, 3))], [t.shape for t in module(torch.randn(6, 3))]
        ([torch.Size([4, 2]), torch.Size([1, 4])], [torch.Size([6, 4, 2]), torch.Size([6, 4])])
    """

    def __init__(self, input_dim: int, embedding_dim: int, num_embeddings: int):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("embedding_dim", embedding_dim), ("num_embeddings", num_embeddings)):
            check_positive_int(value, name)
        self.input_dim, self.embedding_dim, self.num_embeddings = input_dim, embedding_dim, num_embeddings
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.rnn_cell = nn.RNNCell(input_dim, num_embeddings)
        self.register_buffer("_index", torch.arange(num_embeddings), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._index.device

    def init_hidden(self) -> torch.Tensor:
        """hyper-nn's initial state: zeros of shape ``(1, num_embeddings)``."""
        return self.rnn_cell.weight_hh.new_zeros(1, self.num_embeddings)

    def _check(self, x: Any, hidden_state: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            given = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConditionTypeError(f"`x` must be a floating-point tensor of shape (batch, input_dim={self.input_dim}); got {given}.")
        if x.dim() != 2 or x.shape[-1] != self.input_dim:
            raise ConditionError(
                f"`x` must have shape (batch, input_dim={self.input_dim}), one row per sample; got {tuple(x.shape)}."
            )
        if hidden_state.dim() != 2 or hidden_state.shape[0] not in (1, x.shape[0]) or hidden_state.shape[1] != self.num_embeddings:
            raise ConditionError(
                f"`hidden_state` must have shape (1, {self.num_embeddings}) or ({x.shape[0]}, {self.num_embeddings}) "
                f"for x of shape {tuple(x.shape)}; got {tuple(hidden_state.shape)}."
            )

    def _cell(self, x: torch.Tensor, hidden_state: torch.Tensor) -> torch.Tensor:
        # ``self.rnn_cell``'s step written with F.linear: the same values, and torch.func.vmap
        # batches it natively (aten::rnn_tanh_cell has no batching rule).
        cell = self.rnn_cell
        activation = torch.relu if cell.nonlinearity == "relu" else torch.tanh
        return activation(F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(hidden_state, cell.weight_hh, cell.bias_hh))

    def forward(self, x: torch.Tensor, hidden_state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if hidden_state is None:
            hidden_state = self.init_hidden()
        self._check(x, hidden_state)
        hidden = self._cell(x, hidden_state.expand(x.shape[0], self.num_embeddings))
        table = self.embedding(self._index)
        if x.shape[0] == 1:
            return table * hidden.view(self.num_embeddings, 1), hidden
        return table * hidden.unsqueeze(-1), hidden


class TorchDynamicHyperNetwork(TorchHyperNetwork, DynamicHypernetizedModule):
    """hyper-nn's dynamic hypernetwork: ``generate_params(x, hidden_state=None)``.

    ``hnet(x)`` conditions on the target's own input (``forward`` passes it on); pass
    another input, or the state of the previous step, with
    ``generate_params_kwargs=dict(x=..., hidden_state=aux["hidden_state"])``. ``input_dim``
    is the width of ``x``; the other arguments are those of
    :class:`~hypernn.torch.hypernet.TorchHyperNetwork`. A ``(B, n)`` batch of generated
    vectors runs sample ``i`` with vector ``i``.
    """

    def __init__(
        self,
        input_dim: int,
        target_network: nn.Module,
        num_target_parameters: Optional[int] = None,
        embedding_dim: int = 100,
        num_embeddings: int = 3,
        weight_chunk_dim: Optional[int] = None,
        custom_embedding_module: Optional[nn.Module] = None,
        custom_weight_generator: Optional[nn.Module] = None,
    ):
        check_positive_int(input_dim, "input_dim")
        self.input_dim = input_dim  # a plain value may be set before nn.Module.__init__; make_embedding_module reads it
        TorchHyperNetwork.__init__(self, target_network, num_target_parameters, embedding_dim, num_embeddings,
                                   weight_chunk_dim, custom_embedding_module, custom_weight_generator)  # fmt: skip
        names = {name: slot.name for slot in self.layout.slots for name in (slot.name,) + slot.aliases}
        self._runner = PerSampleRunner(self._target, list(names), names)

    # ------------------------------------------------------------ construction

    def _check_forward_arguments(self, model: nn.Module, options: HypernetizeOptions) -> None:
        # The condition is `x` (a generate_params argument), not a `condition=` keyword.
        HypernetizedModule._check_forward_arguments(self, model, options)

    def _build_extra_modules(self, options: HypernetizeOptions, placement: Dict[str, Any]) -> None:
        """None: the dynamic embedding module conditions itself."""

    def make_embedding_module(self) -> nn.Module:
        """``custom_embedding_module`` if given, else
        ``TorchDynamicEmbeddingModule(input_dim, embedding_dim, num_embeddings)``."""
        custom = self.__dict__.get("custom_embedding_module")
        if custom is not None:
            return custom
        return TorchDynamicEmbeddingModule(self.input_dim, self.embedding_dim, self.num_embeddings)

    def _probe_chunks(self) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        dtypes = [p.dtype for p in self.embedding_module.parameters() if p.is_floating_point()]
        x = torch.zeros(1, self.input_dim, device=self.device, dtype=dtypes[0] if dtypes else None)
        embedding, _ = self.embedding_module(x)
        return self.weight_generator(embedding), ()

    # ------------------------------------------------------------ generating

    def generate_params(
        self, x: torch.Tensor, hidden_state: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(params, {"embedding": ..., "hidden_state": h})`` from ``x`` of shape
        ``(B, input_dim)``: ``params`` is one vector for ``B == 1`` (hyper-nn), else
        ``(B, num_embeddings * weight_chunk_dim)``."""
        embedding, hidden = self.embedding_module(x, hidden_state)
        chunks = self.weight_generator(embedding)
        lead = tuple(chunks.shape[:-2]) if isinstance(chunks, torch.Tensor) else ()
        self._check_chunks(chunks, lead)
        return chunks.reshape(*lead, -1), {"embedding": embedding, "hidden_state": hidden}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Like the static check; a ``(B, n)`` batch of vectors is valid too."""
        self._check_vector(generated_params, max_dims=2)
