"""Lunar Lander with REINFORCE and a hypernetwork-generated policy (torch).

The policy is an MLP (8 -> 64 -> 64 -> 4); ``hypernetize(policy, ...)`` replaces all its
weights by chunk embeddings and one shared linear generator, so the agent trains about a
quarter of the values. Each update plays a batch of episodes with the current generated
weights (baked into a plain copy with ``hnet.materialize()``), then takes a policy
gradient step through the generator.

    python examples/lunar_lander_torch.py               # ~2-3 minutes on one CPU thread
    python examples/lunar_lander_torch.py --steps 400   # longer: higher returns

Needs ``pip install "gymnasium[box2d]"``. Writes to ``--out``: ``learning_curve.png``
(return per episode), ``generated_weights.png`` (the first layer's generated weights at
several points of training) and ``episode.gif`` (one episode of the trained policy).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.cli import progress
from common.rl import Episode, finish, make_env, parse_args, policy_batch, run_episode, snapshot_steps
from common.torch_parts import count_trainable, scaled_linear_generator
from hypernn import hypernetize


def make_policy(hidden: int = 64) -> nn.Sequential:
    """Observation (8 values) -> logits of the 4 actions."""
    return nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 4))


def make_hypernetwork(policy: nn.Module, embedding_dim: int, num_embeddings: int, init_std: float) -> nn.Module:
    """Every weight of ``policy`` generated, chunk by chunk, within each tensor."""
    return hypernetize(policy, embedding_dim=embedding_dim, num_embeddings=num_embeddings, layout="per_tensor",
                       generator_factory=scaled_linear_generator(init_std))  # fmt: skip


def logits_of(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``observations -> logits`` in NumPy, without gradients."""

    def logits(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(observations)).numpy()

    return logits


def update(hnet: nn.Module, optimizer: torch.optim.Optimizer, episodes: Sequence[Episode], gamma: float,
           entropy_coef: float) -> float:  # fmt: skip
    """One REINFORCE step on a batch of episodes; returns the loss."""
    observations, actions, advantages = policy_batch(episodes, gamma)
    log_probs = F.log_softmax(hnet(torch.from_numpy(observations)), dim=-1)
    chosen = log_probs.gather(1, torch.from_numpy(actions)[:, None]).squeeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    loss = -(chosen * torch.from_numpy(advantages)).mean() - entropy_coef * entropy
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; write the plots and the GIF; print the summary line; return the results."""
    args = parse_args(__doc__.splitlines()[0], "lunar_lander_torch", argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    policy = make_policy()
    hnet = make_hypernetwork(policy, args.embedding_dim, args.num_embeddings, args.init_std)
    optimizer = torch.optim.Adam(hnet.parameters(), lr=args.lr)
    env = make_env(max_episode_steps=args.max_episode_steps)
    returns: List[float] = []
    snapshots: List[tuple] = []
    snapshot_at = snapshot_steps(args.steps)
    episode_seed = args.seed * 1_000_003

    def first_layer() -> np.ndarray:
        """The generated first-layer weights as (8 inputs, 64 units)."""
        return hnet.generated_state_dict()["0.weight"].numpy().T.copy()

    with progress(range(args.steps), desc="REINFORCE", quiet=args.quiet, unit="update") as bar:
        for step in bar:
            if step in snapshot_at:
                snapshots.append((step, first_layer()))
            act = logits_of(hnet.materialize())  # a plain policy with the current generated weights
            episodes = [run_episode(env, act, seed=episode_seed + i, rng=rng) for i in range(args.episodes_per_step)]
            episode_seed += args.episodes_per_step
            update(hnet, optimizer, episodes, args.gamma, args.entropy_coef)
            returns += [e.total_return for e in episodes]
            bar.set_postfix(avg_return=f"{np.mean(returns[-50:]):.1f}")
    snapshots.append((args.steps, first_layer()))
    results = finish("lunar_lander_torch", logits_of(hnet.materialize()), returns, snapshots, args, rng,
                     policy_params=count_trainable(policy), hypernetwork_params=count_trainable(hnet))  # fmt: skip
    results["model"] = hnet
    return results


if __name__ == "__main__":
    main()
