"""REINFORCE on gymnasium's LunarLander-v3, framework-free: episodes, returns, batches.

The torch and JAX examples supply only ``logits(observations) -> (n, 4)`` and the update.

    >>> discounted_returns(np.array([1.0, 1.0, 1.0]), gamma=0.5)
    array([1.75, 1.5 , 1.  ])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

__all__ = ["ENV_ID", "Episode", "discounted_returns", "make_env", "policy_batch", "run_episode", "sample_action"]

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
