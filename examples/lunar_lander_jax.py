"""Lunar Lander with REINFORCE and a hypernetwork-generated policy (JAX, flax NNX).

The JAX twin of ``lunar_lander_torch.py``: an NNX policy MLP (8 -> 64 -> 64 -> 4) whose
weights are all generated (``hypernetize(policy, ..., rngs=nnx.Rngs(...))``), trained
with optax through ``nnx.Optimizer`` and a jitted update. Episodes are played with the
current generated weights, baked into a plain policy with ``hnet.materialize()``.

    python examples/lunar_lander_jax.py               # ~2-3 minutes on CPU
    python examples/lunar_lander_jax.py --steps 400   # longer: higher returns

Needs ``pip install "gymnasium[box2d]"``. Writes ``learning_curve.png``,
``generated_weights.png`` and ``episode.gif`` to ``--out``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.cli import progress
from common.flax_parts import count_values, scaled_nnx_generator
from common.rl import Episode, finish, make_env, parse_args, policy_batch, run_episode, snapshot_steps
from hypernn import hypernetize


class Policy(nnx.Module):
    """Observation (8 values) -> logits of the 4 actions."""

    def __init__(self, hidden: int = 64, *, rngs: nnx.Rngs) -> None:
        self.layer1 = nnx.Linear(8, hidden, rngs=rngs)
        self.layer2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.layer3 = nnx.Linear(hidden, 4, rngs=rngs)

    def __call__(self, observations: jax.Array) -> jax.Array:
        hidden = jnp.tanh(self.layer1(observations))
        return self.layer3(jnp.tanh(self.layer2(hidden)))


def make_hypernetwork(policy: Policy, embedding_dim: int, num_embeddings: int, init_std: float, seed: int) -> nnx.Module:
    """Every weight of ``policy`` generated, chunk by chunk, within each tensor."""
    return hypernetize(policy, embedding_dim=embedding_dim, num_embeddings=num_embeddings, layout="per_tensor",
                       generator_factory=scaled_nnx_generator(init_std), rngs=nnx.Rngs(seed))  # fmt: skip


def policy_runner(template: Policy) -> Callable[[Policy], Callable[[np.ndarray], np.ndarray]]:
    """``policy -> (observations -> logits)``, one jitted function for every policy of this structure."""
    graphdef, _ = nnx.split(template)
    forward = jax.jit(lambda state, observations: nnx.merge(graphdef, state)(observations))

    def runner(policy: Policy) -> Callable[[np.ndarray], np.ndarray]:
        state = nnx.state(policy)
        return lambda observations: np.asarray(forward(state, observations))

    return runner


def padded(size: int) -> int:
    """Batches are padded to a power of two (at least 256) so the jitted update compiles a few times only."""
    return max(256, 1 << (size - 1).bit_length())


def make_update(entropy_coef: float) -> Callable:
    """A jitted REINFORCE step ``(hnet, optimizer, observations, actions, advantages, mask) -> loss``."""

    def loss_fn(hnet: nnx.Module, observations, actions, advantages, mask) -> jax.Array:
        log_probs = jax.nn.log_softmax(hnet(observations), axis=-1)
        chosen = jnp.take_along_axis(log_probs, actions[:, None], axis=1)[:, 0]
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1)
        return -((chosen * advantages + entropy_coef * entropy) * mask).sum() / mask.sum()

    @nnx.jit
    def update(hnet: nnx.Module, optimizer: nnx.Optimizer, observations, actions, advantages, mask) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(hnet, observations, actions, advantages, mask)
        optimizer.update(hnet, grads)
        return loss

    return update


def batch_arrays(episodes: Sequence[Episode], gamma: float) -> Tuple[jax.Array, ...]:
    """The REINFORCE batch, zero-padded to :func:`padded` steps, with its mask."""
    observations, actions, advantages = policy_batch(episodes, gamma)
    mask = np.ones(len(actions), np.float32)
    extra = padded(len(actions)) - len(actions)
    arrays = (observations, actions, advantages, mask)
    return tuple(jnp.asarray(np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)])) for a in arrays)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; write the plots and the GIF; print the summary line; return the results."""
    args = parse_args(__doc__.splitlines()[0], "lunar_lander_jax", argv)
    rng = np.random.default_rng(args.seed)
    policy = Policy(rngs=nnx.Rngs(args.seed))
    hnet = make_hypernetwork(policy, args.embedding_dim, args.num_embeddings, args.init_std, args.seed + 1)
    optimizer = nnx.Optimizer(hnet, optax.adam(args.lr), wrt=nnx.Param)
    update, runner = make_update(args.entropy_coef), policy_runner(policy)
    env = make_env(max_episode_steps=args.max_episode_steps)
    returns: List[float] = []
    snapshots: List[tuple] = []
    snapshot_at = snapshot_steps(args.steps)
    episode_seed = args.seed * 1_000_003
    with progress(range(args.steps), desc="REINFORCE", quiet=args.quiet, unit="update") as bar:
        for step in bar:
            current = hnet.materialize()  # a plain Policy with the current generated weights
            if step in snapshot_at:
                snapshots.append((step, np.asarray(current.layer1.kernel[...])))
            act = runner(current)
            episodes = [run_episode(env, act, seed=episode_seed + i, rng=rng) for i in range(args.episodes_per_step)]
            episode_seed += args.episodes_per_step
            update(hnet, optimizer, *batch_arrays(episodes, args.gamma))
            returns += [e.total_return for e in episodes]
            bar.set_postfix(avg_return=f"{np.mean(returns[-50:]):.1f}")
    final = hnet.materialize()
    snapshots.append((args.steps, np.asarray(final.layer1.kernel[...])))
    results = finish("lunar_lander_jax", runner(final), returns, snapshots, args, rng,
                     policy_params=count_values(nnx.state(policy, nnx.Param)),
                     hypernetwork_params=count_values(nnx.state(hnet, nnx.Param)))  # fmt: skip
    results["model"] = hnet
    return results


if __name__ == "__main__":
    main()
