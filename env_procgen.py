"""Procgen behind the `VecEnv` shape: its own C++ vector env (gym3 API) with frame stacking."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from errors import UsageError
from vecenv import EpisodeTracker, FrameStack, StepResult, VecEnv, cpus_per_process

PROCGEN_GAMES = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)
PROCGEN_MODES = ("easy", "hard", "extreme", "memory", "exploration")


def _import_procgen():
    with contextlib.redirect_stderr(io.StringIO()):  # old gym prints a deprecation banner on import
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env


class ProcgenVecEnv(VecEnv):
    """Procgen's own C++ vector env (gym3 API) behind the common shape.

    Procgen resets finished games itself and does not expose the last frame nor whether a game hit
    its time limit, so every episode end counts as terminated, as in the official PPO baseline.
    """

    frame_channels = 3
    num_actions = 15

    def __init__(
        self,
        game: str,
        num_envs: int,
        seed: int,
        history_length: int,
        distribution_mode: str,
        start_level: int,
        num_levels: int,
    ):
        self.kwargs = dict(
            num=num_envs,
            env_name=game,
            num_levels=num_levels,
            start_level=start_level,
            distribution_mode=distribution_mode,
            rand_seed=seed,
            num_threads=min(4, cpus_per_process()),
        )
        self.num_envs = num_envs
        self.obs_shape = (3 * history_length, 64, 64)
        self.frames = FrameStack(num_envs, (3, 64, 64), history_length)
        self.tracker = EpisodeTracker(num_envs)
        self.env = None

    def reset(self) -> np.ndarray:
        if self.env is not None:
            self.env.close()
        self.env = _import_procgen()(**self.kwargs)  # gym3 envs cannot be reset: a new one is cheap
        _, obs, _ = self.env.observe()
        self.frames.reset(obs["rgb"].transpose(0, 3, 1, 2))
        self.tracker.reset()
        return self.frames.stack.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        self.env.act(actions.astype(np.int32))
        rewards, obs, first = self.env.observe()  # first[i]: obs[i] starts a new game
        frames = obs["rgb"].transpose(0, 3, 1, 2)
        final_obs = self.frames.step(frames, frames, first)
        rewards = rewards.astype(np.float32)
        episodes = self.tracker.step(rewards, first)
        return StepResult(self.frames.stack.copy(), rewards, first.copy(), np.zeros_like(first), final_obs, episodes)

    def render(self, index: int = 0) -> np.ndarray:
        return np.ascontiguousarray(self.frames.stack[index, -3:].transpose(1, 2, 0))

    def get_state(self) -> dict:
        return {"games": list(self.env.get_state()), "frames": self.frames.stack.copy(), **self.tracker.state_dict()}

    def set_state(self, state: dict) -> np.ndarray:
        self.reset()
        if len(state["games"]) != self.num_envs or state["frames"].shape != self.frames.stack.shape:
            raise UsageError("saved Procgen env state does not match this run's envs")
        self.env.set_state(list(state["games"]))
        self.frames.stack[:] = state["frames"]
        self.tracker.load_state_dict(state)
        return self.frames.stack.copy()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
