"""REINFORCE on gymnasium's LunarLander-v3, framework-free: episodes, returns, batches.

The torch and JAX examples supply only ``logits(observations) -> (n, 4)`` and the update.

    >>> discounted_returns(np.array([1.0, 1.0, 1.0]), gamma=0.5)
    array([1.75, 1.5 , 1.  ])
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cli import example_parser, output_dir, summary_line
from .plots import plot_curves, plot_heatmaps, save_gif

__all__ = ["ENV_ID", "Episode", "discounted_returns", "finish", "make_env", "parse_args", "policy_batch", "run_episode",
           "sample_action", "snapshot_steps"]  # fmt: skip

ENV_ID = "LunarLander-v3"

Logits = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Episode:
    """One episode: observations ``(T, 8)``, actions ``(T,)``, rewards ``(T,)``, frames if rendered."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    frames: List[np.ndarray]

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())


def make_env(render: bool = False, max_episode_steps: Optional[int] = None):
    """``LunarLander-v3`` (rendering to arrays, headless, when ``render``)."""
    import gymnasium as gym

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    return gym.make(ENV_ID, render_mode="rgb_array" if render else None, **kwargs)


def sample_action(logits: np.ndarray, rng: np.random.Generator, greedy: bool = False) -> int:
    """An action from softmax(``logits``), or the most likely one."""
    if greedy:
        return int(np.argmax(logits))
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return int(rng.choice(len(probabilities), p=probabilities))


def run_episode(env, logits: Logits, *, seed: int, rng: np.random.Generator, greedy: bool = False,
                render: bool = False) -> Episode:  # fmt: skip
    """Play one episode with the policy ``logits``; keep every rendered frame when ``render``."""
    observation, _ = env.reset(seed=seed)
    observations, actions, rewards, frames = [], [], [], []
    done = False
    while not done:
        if render:
            frames.append(env.render())
        action = sample_action(np.asarray(logits(observation[None]))[0], rng, greedy)
        observations.append(observation)
        actions.append(action)
        observation, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return Episode(np.asarray(observations, np.float32), np.asarray(actions, np.int64),
                   np.asarray(rewards, np.float32), frames)  # fmt: skip


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go at every step: ``G_t = r_t + gamma * G_{t+1}``."""
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def policy_batch(episodes: Sequence[Episode], gamma: float):
    """``(observations, actions, advantages)`` of a batch of episodes for the REINFORCE loss.

    Advantages are the returns-to-go, normalised over the batch (mean 0, std 1): a
    baseline that lowers the variance of the gradient.
    """
    observations = np.concatenate([e.observations for e in episodes])
    actions = np.concatenate([e.actions for e in episodes])
    returns = np.concatenate([discounted_returns(e.rewards, gamma) for e in episodes])
    advantages = (returns - returns.mean()) / (returns.std() + 1e-8)
    return observations, actions, advantages.astype(np.float32)


def parse_args(description: str, name: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The Lunar Lander examples' command line."""
    parser = example_parser(description, name=name, length="steps", default_length=150)
    parser.add_argument("--episodes-per-step", type=int, default=8, help="episodes played per policy update")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    parser.add_argument("--entropy-coef", type=float, default=0.01, help="weight of the entropy bonus")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=64, help="upper bound on the number of chunks")
    parser.add_argument("--init-std", type=float, default=0.1, help="starting std of the generated weights")
    parser.add_argument("--eval-episodes", type=int, default=10, help="greedy episodes for the final score")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="cut episodes short (tests)")
    parser.add_argument("--no-gif", action="store_true", help="skip rendering the episode GIF")
    return parser.parse_args(argv)


def snapshot_steps(steps: int, count: int = 6) -> set:
    """The updates before which the generated weights are recorded for the plot (the
    examples add the final weights, after update ``steps``, themselves).

        >>> sorted(snapshot_steps(10))
        [0, 2, 4, 6, 8]
    """
    return set(np.linspace(0, steps, count).round().astype(int).tolist()) - {steps}


def finish(example: str, act: Logits, returns: List[float], snapshots: List[Tuple[int, np.ndarray]],
           args: argparse.Namespace, rng: np.random.Generator, **counts: int) -> Dict[str, Any]:  # fmt: skip
    """Score the trained policy ``act`` (greedy episodes), write the learning curve, the
    weight snapshots (``(8, 64)`` arrays) and the episode GIF, print the summary line."""
    out = output_dir(args.out)
    env = make_env(max_episode_steps=args.max_episode_steps)
    greedy = [run_episode(env, act, seed=10**9 + i, rng=rng, greedy=True).total_return for i in range(args.eval_episodes)]
    files = {
        "learning_curve": plot_curves({"return": returns}, out / "learning_curve.png", xlabel="episode",
                                      ylabel="return", title=f"REINFORCE on {ENV_ID}, hypernetwork policy ({example})",
                                      smooth=min(50, max(1, len(returns) // 5))),
        "weights": plot_heatmaps([w for _, w in snapshots], [f"update {s}" for s, _ in snapshots],
                                 out / "generated_weights.png", columns=2, panel=(4.5, 1.2),
                                 suptitle="generated first-layer weights (8 inputs x 64 units) over training"),
    }  # fmt: skip
    if not args.no_gif:
        episode = run_episode(make_env(render=True, max_episode_steps=args.max_episode_steps), act, seed=10**9,
                              rng=rng, greedy=True, render=True)  # fmt: skip
        files["gif"] = save_gif(episode.frames[::2], out / "episode.gif", fps=25)
    results = {"returns": returns, "final_avg_return": float(np.mean(returns[-50:])),
               "greedy_return": float(np.mean(greedy)) if greedy else float("nan"), "files": files, **counts}  # fmt: skip
    print(summary_line(example, final_avg_return=f"{results['final_avg_return']:.1f}",
                       greedy_return=f"{results['greedy_return']:.1f}", episodes=len(returns), **counts))  # fmt: skip
    return results
