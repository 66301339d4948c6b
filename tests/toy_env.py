"""Tiny pixel games for learning tests: reach a goal on a grid; remember a cue through a corridor."""

from __future__ import annotations

import numpy as np

from vecenv import EpisodeStats, FrameStack, StepResult, VecEnv

MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


class GridGoalVecEnv(VecEnv):
    """`size`x`size` grid drawn at `scale` pixels per cell: agent in red, goal in green.
    Reward 1 and termination on reaching the goal (when `reachable`); truncation after `limit` steps."""

    frame_channels = 3
    num_actions = 4

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        size: int = 5,
        scale: int = 2,
        limit: int = 12,
        history_length: int = 1,
        reachable: bool = True,
    ):
        self.num_envs, self.size, self.scale, self.limit, self.reachable = num_envs, size, scale, limit, reachable
        self.obs_shape = (3 * history_length, size * scale, size * scale)
        self.rng = np.random.default_rng(seed)
        self.agent = np.zeros((num_envs, 2), int)
        self.goal = np.zeros((num_envs, 2), int)
        self.t = np.zeros(num_envs, int)
        self.frames = FrameStack(num_envs, (3, size * scale, size * scale), history_length)

    def _new_episode(self, rows: np.ndarray) -> None:
        for i in rows:
            self.agent[i], self.goal[i] = (
                self.rng.choice(self.size * self.size, 2, replace=False)[:, None] // [self.size, 1] % self.size
            )
            self.t[i] = 0

    def _draw(self) -> np.ndarray:
        img = np.zeros((self.num_envs, 3, self.size, self.size), np.uint8)
        idx = np.arange(self.num_envs)
        img[idx, 0, self.agent[:, 0], self.agent[:, 1]] = 255
        img[idx, 1, self.goal[:, 0], self.goal[:, 1]] = 255
        return img.repeat(self.scale, axis=2).repeat(self.scale, axis=3)

    def reset(self) -> np.ndarray:
        self._new_episode(np.arange(self.num_envs))
        self.frames.reset(self._draw())
        return self.frames.stack.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        self.agent = np.clip(self.agent + MOVES[actions], 0, self.size - 1)
        self.t += 1
        terminated = (self.agent == self.goal).all(1) & self.reachable
        truncated = (self.t >= self.limit) & ~terminated
        rewards = terminated.astype(np.float32)
        ended = terminated | truncated
        final_frames = self._draw()
        episodes = [EpisodeStats(int(i), float(rewards[i]), int(self.t[i])) for i in np.flatnonzero(ended)]
        self._new_episode(np.flatnonzero(ended))
        final_obs = self.frames.step(self._draw(), final_frames, ended)
        return StepResult(self.frames.stack.copy(), rewards, terminated, truncated, final_obs, episodes)

    def render(self, index: int = 0) -> np.ndarray:
        return self._draw()[index].transpose(1, 2, 0)


class CueMemoryVecEnv(VecEnv):
    """A memory test: the first frame shows a cue (red or green), then `corridor` grey frames, then a blue
    frame asks for the choice: action 0 for red, 1 for green earns 1, the other 0, and the episode ends.
    Only the first frame tells the answer, so a policy without memory stays at 0.5."""

    frame_channels = 3
    num_actions = 2

    def __init__(self, num_envs: int, seed: int = 0, corridor: int = 3, size: int = 8):
        self.num_envs, self.corridor, self.size = num_envs, corridor, size
        self.obs_shape = (3, size, size)
        self.rng = np.random.default_rng(seed)
        self.cue = np.zeros(num_envs, int)
        self.t = np.zeros(num_envs, int)

    def _new_episode(self, rows: np.ndarray) -> None:
        self.cue[rows] = self.rng.integers(0, 2, len(rows))
        self.t[rows] = 0

    def _draw(self) -> np.ndarray:
        img = np.full((self.num_envs, 3, self.size, self.size), 128, np.uint8)
        first, choice = self.t == 0, self.t == self.corridor + 1
        img[first] = 0
        img[first & (self.cue == 0), 0] = 255
        img[first & (self.cue == 1), 1] = 255
        img[choice] = 0
        img[choice, 2] = 255
        return img

    def reset(self) -> np.ndarray:
        self._new_episode(np.arange(self.num_envs))
        return self._draw()

    def step(self, actions: np.ndarray) -> StepResult:
        at_choice = self.t == self.corridor + 1
        rewards = (at_choice & (actions == self.cue)).astype(np.float32)
        self.t += 1
        episodes = [EpisodeStats(int(i), float(rewards[i]), int(self.t[i])) for i in np.flatnonzero(at_choice)]
        final_obs = self._draw()
        self._new_episode(np.flatnonzero(at_choice))
        no = np.zeros(self.num_envs, bool)
        return StepResult(self._draw(), rewards, at_choice, no, final_obs, episodes)

    def render(self, index: int = 0) -> np.ndarray:
        return self._draw()[index].transpose(1, 2, 0)
