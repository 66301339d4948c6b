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
    starts: torch.Tensor  # (B,) bool: the obs is the first of an episode
    initial_state: torch.Tensor | None = None  # (n, S) recurrent state of the minibatch's n envs at step 0


class StackedFrames:
    """Frame stacks (T, N, K*C, H, W) stored one frame per step: K times less memory than the stacks.

    Frame j of the stack at step t is frames[t + j] unless it is one of the `padding[t]` leading zero
    frames of an episode's first steps (every family pads new stacks with zeros, oldest frame first).
    The first step of the rollout is kept whole (its K frames); after that each step adds its newest frame
    and whether its stack continues the previous one (padding shrinks) or starts an episode (K-1 zeros).
    """

    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], frame_channels: int, device):
        self.k, self.c = obs_shape[0] // frame_channels, frame_channels
        self.num_envs = num_envs
        self.frames = torch.zeros(
            (num_steps + self.k - 1, num_envs, frame_channels, *obs_shape[1:]), dtype=torch.uint8, device=device
        )
        self.padding = torch.zeros((num_steps, num_envs), dtype=torch.long, device=device)
        self.slot = torch.arange(self.k, device=device)  # (K,)
        self.malformed = torch.zeros((), dtype=torch.bool, device=device)  # checked once per rollout, not per step

    def add(self, t: int, stacks: torch.Tensor) -> None:
        """stacks (N, K*C, H, W) uint8: the observations acted on at step t."""
        frames = stacks.reshape(self.num_envs, self.k, self.c, *stacks.shape[2:])  # (N, K, C, H, W)
        if t == 0:
            self.frames[: self.k] = frames.transpose(0, 1)
            self.padding[0] = 0
            return
        previous_padding = self.padding[t - 1]
        shifted = self.frames[t : t + self.k - 1].transpose(0, 1)  # the previous stack's newest K-1 frames
        zeroed = self.slot[None, : self.k - 1] < (previous_padding[:, None] - 1)  # (N, K-1) its padding
        expected = shifted.masked_fill(zeroed[..., None, None, None], 0)
        older = frames[:, :-1]
        continues = (older == expected).flatten(1).all(1)  # (N,)
        starts = ~continues
        self.malformed |= (starts & (older.flatten(1) != 0).any(1)).any()  # a new stack must be zero padded
        self.padding[t] = torch.where(continues, (previous_padding - 1).clamp(min=0), self.k - 1)
        self.frames[t + self.k - 1] = frames[:, -1]

    def check(self) -> None:
        """Once per rollout (a host-device sync): every stack continued the previous one or started zero padded."""
        if self.malformed:
            raise ValueError("frame stacks must continue the previous step's or start an episode zero padded")

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Flat (t * N + n) indices (B,) -> their stacks (B, K*C, H, W)."""
        t, n = index // self.num_envs, index % self.num_envs
        stacks = self.frames[t[:, None] + self.slot, n[:, None]]  # (B, K, C, H, W)
        padded = self.slot[None, :] < self.padding[t, n][:, None]  # (B, K) leading zero frames
        stacks.masked_fill_(padded[:, :, None, None, None], 0)  # no boolean indexing: no sync on a GPU
        return stacks.reshape(len(index), -1, *stacks.shape[3:])


ROLLOUT_FIELDS = ("actions", "logprobs", "values", "rewards", "dones", "bootstrap", "starts")


class RolloutBuffer:
    """Preallocated (T, N, ...) storage of one rollout.

    `inputs` holds what the update feeds the policy: uint8 frame stacks (T, N, K*C, H, W), each frame
    stored once when `frame_channels` is given and K > 1 (StackedFrames), or, with `feature_dim` set
    (frozen backbone), the backbone features (T, N, F) computed during the rollout, so the epochs never
    run the backbone again and the frames need not be kept.

    `dones[t]` marks that the episode of each env ended at step t (terminated or truncated), so
    obs[t + 1] belongs to a new episode; `starts[t]` marks obs[t] as an episode's first (a recurrent policy
    zeroes its state there) and `initial_state` holds the recurrent state before step 0. `bootstrap[t]` is
    V(final_obs) for a truncated step, 0 else: a truncated episode is cut by a time limit, not by the game, so
    its value is not zero.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        device: torch.device,
        feature_dim: int | None = None,
        frame_channels: int | None = None,
        state_size: int = 0,
    ):
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        shape = (num_steps, num_envs)
        self.inputs: torch.Tensor | StackedFrames
        if feature_dim is not None:
            self.inputs = torch.zeros(shape + (feature_dim,), device=device)
        elif frame_channels and obs_shape[0] > frame_channels:
            self.inputs = StackedFrames(num_steps, num_envs, obs_shape, frame_channels, device)
        else:
            self.inputs = torch.zeros(shape + tuple(obs_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros(shape, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)
        self.bootstrap = torch.zeros(shape, device=device)
        self.advantages = torch.zeros(shape, device=device)
        self.returns = torch.zeros(shape, device=device)
        self.starts = torch.zeros(shape, dtype=torch.bool, device=device)
        self.initial_state = torch.zeros(num_envs, state_size, device=device) if state_size else None

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
        starts: torch.Tensor | None = None,
    ) -> None:
        """Store step t of every env: the obs (or its features) acted on, whether it began an episode, and what
        followed."""
        if isinstance(self.inputs, StackedFrames):
            self.inputs.add(t, inputs)
        else:
            self.inputs[t] = inputs
        self.actions[t] = actions
        self.logprobs[t] = logprobs
        self.values[t] = values
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.bootstrap[t] = bootstrap
        if starts is not None:
            self.starts[t] = starts

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The collected rollout as CPU tensors, for a checkpoint written between collecting and learning
        (advantages and returns are not kept: GAE recomputes them)."""
        if isinstance(self.inputs, StackedFrames):
            inputs = {"frames": self.inputs.frames, "padding": self.inputs.padding, "malformed": self.inputs.malformed}
        else:
            inputs = {"inputs": self.inputs}
        fields = {name: getattr(self, name) for name in ROLLOUT_FIELDS} | inputs
        if self.initial_state is not None:
            fields["initial_state"] = self.initial_state
        return {name: value.cpu() for name, value in fields.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            owner = self.inputs if name in ("frames", "padding", "malformed") else self
            getattr(owner, name).copy_(value)

    def compute_advantages(self, last_values: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        """GAE(lambda) advantages and returns; `last_values` (N,) is V(obs after the last step)."""
        if isinstance(self.inputs, StackedFrames):
            self.inputs.check()
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

    def normalize_advantages(self) -> None:
        """Advantages to zero mean and unit std over the whole rollout (returns stay as computed)."""
        self.advantages = (self.advantages - self.advantages.mean()) / (self.advantages.std() + 1e-8)

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None) -> Iterator[Minibatch]:
        """One pass over the flattened rollout in random minibatches: random steps, or, with a recurrent
        policy (initial_state set), random sets of whole env sequences, time-major (t * n + env)."""
        flat = lambda x: x.reshape(self.batch_size, *x.shape[2:])  # noqa: E731
        stacked = isinstance(self.inputs, StackedFrames)
        inputs = self.inputs.gather if stacked else flat(self.inputs).__getitem__
        actions, logprobs, values = flat(self.actions), flat(self.logprobs), flat(self.values)
        advantages, returns, starts = flat(self.advantages), flat(self.returns), flat(self.starts)
        if self.initial_state is None:
            groups = torch.randperm(self.batch_size, generator=generator).to(self.device).chunk(num_minibatches)
        else:
            envs = torch.randperm(self.num_envs, generator=generator).to(self.device).chunk(num_minibatches)
            steps = torch.arange(self.num_steps, device=self.device)[:, None] * self.num_envs
            groups = [(steps + e[None, :]).flatten() for e in envs]
        for i, idx in enumerate(groups):
            state = None if self.initial_state is None else self.initial_state[envs[i]]
            yield Minibatch(
                inputs(idx), actions[idx], logprobs[idx], values[idx], advantages[idx], returns[idx], starts[idx], state
            )


class RunningMeanStd:
    """Streaming mean and variance (parallel algorithm of Chan et al.)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray, reduce=None) -> None:
        """Add the batch `x`; `reduce` (under torchrun) sums [count, sum, sum of squares] over ranks, so every
        rank adds the same global batch."""
        if reduce is None:
            batch_mean, batch_var, n = float(np.mean(x)), float(np.var(x)), x.size
        else:
            moments = reduce(np.array([x.size, np.sum(x), np.sum(np.square(x))], dtype=np.float64))
            n, total, squares = (float(m) for m in moments)
            batch_mean = total / n
            batch_var = max(squares / n - batch_mean**2, 0.0)
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict:
        return {"mean": float(self.mean), "var": float(self.var), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class RewardScaler:
    """Training-reward transform: `none`, `sign` (Atari clipping) or `normalize` (divide by the
    running std of the discounted return, as gym's NormalizeReward and the Procgen baseline do)."""

    def __init__(self, mode: str, num_envs: int, gamma: float, clip: float = 10.0, reduce=None):
        self.mode, self.gamma, self.clip, self.reduce = mode, gamma, clip, reduce
        self.discounted = np.zeros(num_envs, dtype=np.float64)
        self.stats = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards (N,) raw, dones (N,) episode ended at this step -> scaled rewards (N,) float32; updates the
        running statistics of the discounted return first."""
        if self.mode == "normalize":
            self.discounted = self.discounted * self.gamma + rewards
            self.stats.update(self.discounted, self.reduce)
            self.discounted[dones] = 0.0
        return self.scale(rewards)

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """The transform alone, with the statistics as they are (evaluation's value analysis uses it too)."""
        if self.mode == "sign":
            return np.sign(rewards).astype(np.float32)
        if self.mode == "normalize":
            scaled = rewards / np.sqrt(self.stats.var + 1e-8)
            return np.clip(scaled, -self.clip, self.clip).astype(np.float32)
        return rewards.astype(np.float32)

    def state_dict(self) -> dict:
        return {"discounted": self.discounted.tolist(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discounted = np.asarray(state["discounted"], dtype=np.float64)
        self.stats.load_state_dict(state["stats"])
