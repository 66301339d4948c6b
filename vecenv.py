"""The one shape every pixel-game family is served behind: the `VecEnv` contract, frame stacking, episode tracking.

Every vector env built by `make_vec_env` (env.py) follows one contract (`VecEnv`):
- `reset() -> obs` and `step(actions) -> StepResult`; obs is uint8 (num_envs, K*C, H, W): the K most
  recent frames of C channels each, oldest first, zeros before an episode's first frame.
- Autoreset is SAME_STEP: when an episode ends at a step, `obs[i]` is already the first observation of
  the next episode and the true last observation is `final_obs[i]` (needed to bootstrap truncations).
- `rewards` are the raw game rewards; `terminated` / `truncated` are the training signals (Atari's
  episodic life marks a lost life as terminated); `episodes` reports finished *full* games with their
  raw return and length (Crafter: also the achievements unlocked).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeStats:
    """One finished full game: raw (unclipped) return and length in agent steps."""

    env_index: int
    ret: float
    length: int
    achievements: dict[str, int] | None = None  # Crafter: unlock counts of this episode


@dataclass
class StepResult:
    obs: np.ndarray  # (N, K*C, H, W) uint8, first frames of new episodes where one ended
    rewards: np.ndarray  # (N,) float32 raw game rewards
    terminated: np.ndarray  # (N,) bool: no bootstrapping past this step
    truncated: np.ndarray  # (N,) bool: cut by a time limit, bootstrap from final_obs
    final_obs: np.ndarray  # (N, K*C, H, W) uint8, the true last obs where terminated|truncated
    episodes: list[EpisodeStats] = field(default_factory=list)


class EnvCrashError(RuntimeError):
    """Env workers crashed more often than allowed."""


def cpus_per_process() -> int:
    """The CPU cores this process may use (its affinity mask, as SLURM and containers set it), shared with the
    other processes torchrun started on this machine."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class FrameStack:
    """Keeps the last K frames of each env in one (N, K*C, H, W) uint8 array, oldest frame first."""

    def __init__(self, num_envs: int, frame_shape: tuple[int, int, int], k: int):
        self.c = frame_shape[0]
        self.k = k
        self.stack = np.zeros((num_envs, k * self.c, *frame_shape[1:]), dtype=np.uint8)

    def reset(self, frames: np.ndarray, rows: np.ndarray | slice = slice(None)) -> None:
        """Start the stacks of `rows` from their first frame (N_rows, C, H, W); older slots are zeros,
        as in ALE's own stacking, so every family pads a fresh episode the same way."""
        self.stack[rows] = 0
        self.stack[rows, -self.c :] = frames

    def push(self, frames: np.ndarray) -> None:
        """Shift every stack by one frame and append `frames` (N, C, H, W) as the newest."""
        self.stack[:, : -self.c] = self.stack[:, self.c :]
        self.stack[:, -self.c :] = frames

    def step(self, frames: np.ndarray, final_frames: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Push one step where `frames` are post-autoreset; returns final stacks (N, K*C, H, W).

        For envs that ended, `final_frames[i]` is the true last frame and `frames[i]` the new
        episode's first frame: the returned final stack ends in the former, the live stack restarts.
        """
        self.push(np.where(ended[:, None, None, None], final_frames, frames))
        final = self.stack.copy()
        if ended.any():
            self.reset(frames[ended], ended)
        return final


class EpisodeTracker:
    """Sums raw rewards per env and reports each finished game."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0
        self.lengths[:] = 0

    def discard(self, rows: np.ndarray) -> None:
        """Forget the running episodes of `rows` (cut short, not finished games)."""
        self.returns[rows] = 0
        self.lengths[rows] = 0

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "lengths": self.lengths.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.returns[:] = state["returns"]
        self.lengths[:] = state["lengths"]

    def step(self, rewards: np.ndarray, game_over: np.ndarray, achievements=None) -> list[EpisodeStats]:
        self.returns += rewards
        self.lengths += 1
        episodes = []
        for i in np.flatnonzero(game_over):
            extra = achievements[i] if achievements is not None else None
            episodes.append(EpisodeStats(int(i), float(self.returns[i]), int(self.lengths[i]), extra))
            self.returns[i] = 0
            self.lengths[i] = 0
        return episodes


class VecEnv(ABC):
    """The one vector-env shape every family is served behind (see module docstring)."""

    num_envs: int
    obs_shape: tuple[int, int, int]  # (K*C, H, W)
    frame_channels: int  # C
    num_actions: int

    @abstractmethod
    def reset(self) -> np.ndarray:
        """Start fresh episodes in every env; returns obs (N, K*C, H, W) uint8."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> StepResult: ...

    @abstractmethod
    def render(self, index: int = 0) -> np.ndarray:
        """RGB frame (H, W, 3) uint8 of env `index`'s current state, for videos."""

    def get_state(self) -> dict | None:
        """Everything needed to continue these exact episodes later (None: this family can't)."""
        return None

    def set_state(self, state: dict) -> np.ndarray:
        """Continue from `get_state()`'s result; -> the current obs."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore game state")

    def close(self) -> None:
        return None

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
