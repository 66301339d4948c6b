"""Rollout storage with GAE, and the reward scalers applied before storing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Minibatch:
    inputs: torch.Tensor  # (B, K*C, H, W) uint8 frames, or (B, F) cached backbone features
    actions: torch.Tensor  # (B,)
    logprobs: torch.Tensor  # (B,) log-prob under the rollout policy
    values: torch.Tensor  # (B,) value estimates of the rollout policy
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,) value targets: advantages + values


class RolloutBuffer:
    """Preallocated (T, N, ...) storage of one rollout.

    `inputs` holds what the update feeds the policy: uint8 frame stacks (T, N, K*C, H, W), or, with
    `feature_dim` set (frozen backbone), the backbone features (T, N, F) computed during the rollout,
    so the epochs never run the backbone again and the frames need not be kept.

    `dones[t]` marks that the episode of each env ended at step t (terminated or truncated), so
    obs[t + 1] belongs to a new episode. `bootstrap[t]` is V(final_obs) for a truncated step, 0 else:
    a truncated episode is cut by a time limit, not by the game, so its value is not zero.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        device: torch.device,
        feature_dim: int | None = None,
    ):
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        shape = (num_steps, num_envs)
        if feature_dim is None:
            self.inputs = torch.zeros(shape + tuple(obs_shape), dtype=torch.uint8, device=device)
        else:
            self.inputs = torch.zeros(shape + (feature_dim,), device=device)
        self.actions = torch.zeros(shape, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)
        self.bootstrap = torch.zeros(shape, device=device)
        self.advantages = torch.zeros(shape, device=device)
        self.returns = torch.zeros(shape, device=device)

    @property
    def batch_size(self) -> int:
        return self.num_steps * self.num_envs

    def add(
        self,
        t: int,
        inputs: torch.Tensor,
        actions: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        bootstrap: torch.Tensor,
    ) -> None:
        """Store step t of every env: the obs (or its features) acted on and what followed."""
        self.inputs[t] = inputs
        self.actions[t] = actions
        self.logprobs[t] = logprobs
        self.values[t] = values
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.bootstrap[t] = bootstrap

    def compute_advantages(self, last_values: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        """GAE(lambda) advantages and returns; `last_values` (N,) is V(obs after the last step)."""
        next_value = last_values
        last_gae = torch.zeros_like(last_values)
        for t in reversed(range(self.num_steps)):
            not_done = 1.0 - self.dones[t]
            # where an episode ended, the next state is its final one: V(final) if truncated, 0 if terminated
            next_state_value = not_done * next_value + self.bootstrap[t]
            delta = self.rewards[t] + gamma * next_state_value - self.values[t]
            last_gae = delta + gamma * gae_lambda * not_done * last_gae
            self.advantages[t] = last_gae
            next_value = self.values[t]
        self.returns = self.advantages + self.values

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None) -> Iterator[Minibatch]:
        """One pass over the flattened rollout in random minibatches."""
        order = torch.randperm(self.batch_size, generator=generator).to(self.device)
        flat = lambda x: x.reshape(self.batch_size, *x.shape[2:])  # noqa: E731
        inputs, actions, logprobs, values = (
            flat(self.inputs),
            flat(self.actions),
            flat(self.logprobs),
            flat(self.values),
        )
        advantages, returns = flat(self.advantages), flat(self.returns)
        for idx in order.chunk(num_minibatches):
            yield Minibatch(inputs[idx], actions[idx], logprobs[idx], values[idx], advantages[idx], returns[idx])


class RunningMeanStd:
    """Streaming mean and variance (parallel algorithm of Chan et al.)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = float(np.mean(x)), float(np.var(x)), x.size
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class RewardScaler:
    """Training-reward transform: `none`, `sign` (Atari clipping) or `normalize` (divide by the
    running std of the discounted return, as gym's NormalizeReward and the Procgen baseline do)."""

    def __init__(self, mode: str, num_envs: int, gamma: float, clip: float = 10.0):
        self.mode, self.gamma, self.clip = mode, gamma, clip
        self.discounted = np.zeros(num_envs, dtype=np.float64)
        self.stats = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards (N,) raw, dones (N,) episode ended at this step -> scaled rewards (N,) float32."""
        if self.mode == "sign":
            return np.sign(rewards).astype(np.float32)
        if self.mode == "normalize":
            self.discounted = self.discounted * self.gamma + rewards
            self.stats.update(self.discounted)
            self.discounted[dones] = 0.0
            scaled = rewards / np.sqrt(self.stats.var + 1e-8)
            return np.clip(scaled, -self.clip, self.clip).astype(np.float32)
        return rewards.astype(np.float32)

    def state_dict(self) -> dict:
        return {"discounted": self.discounted.tolist(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discounted = np.asarray(state["discounted"], dtype=np.float64)
        self.stats.load_state_dict(state["stats"])
