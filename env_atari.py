"""Atari behind the `VecEnv` shape: ALE's C++ vector env with the standard preprocessing, game names checked
against the bundled ROMs."""

from __future__ import annotations

import re

import numpy as np

from errors import UsageError
from vecenv import EpisodeTracker, StepResult, VecEnv, cpus_per_process


def atari_rom_id(game: str) -> str:
    """`Breakout`, `MsPacman`, `ms_pacman` -> ALE ROM id, checked against the bundled ROMs."""
    from ale_py import roms

    rom = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", game).lower()
    known = roms.get_all_rom_ids()
    if rom not in known:
        close = [k for k in known if k.replace("_", "").startswith(rom.replace("_", "")[:4])]
        hint = f"did you mean: {', '.join(close[:5])}; " if close else ""
        raise UsageError(
            f"unknown Atari game {game!r}; {hint}the games are ALE's ROM ids, listed by "
            'python -c "from ale_py import roms; print(*roms.get_all_rom_ids())"'
        )
    return rom


class AtariVecEnv(VecEnv):
    """ALE's C++ vector env with the standard preprocessing (84x84 gray, frameskip 4 with max-pool,
    30 no-op starts, fire reset, frame stack) and raw rewards.

    With `episodic_life` a lost life is reported as terminated (a training-only trick) while the game
    goes on; `episodes` always reports full games, so returns are those of whole games. In games with a FIRE
    action, every life starts with FIRE, as CleanRL's FireResetEnv does after each lost life (ALE presses it
    only when a game starts): the env replaces the policy's action by FIRE on the first step after a lost
    life, so that step's action has no effect, and no policy waits forever for a ball that is never served.
    """

    frame_channels = 1

    def __init__(
        self,
        game: str,
        num_envs: int,
        seed: int,
        history_length: int,
        episodic_life: bool,
        repeat_action_probability: float,
    ):
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(
            game,
            num_envs,
            num_threads=min(num_envs, cpus_per_process()),
            autoreset_mode="SameStep",
            img_height=84,
            img_width=84,
            grayscale=True,
            stack_num=history_length,
            frameskip=4,
            maxpool=True,
            noop_max=30,
            use_fire_reset=True,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            repeat_action_probability=repeat_action_probability,
        )
        self.seed = seed
        self.episodic_life = episodic_life
        self.fire_action = fire_action_index(game)
        self.fire_next = np.zeros(num_envs, dtype=bool)  # the first step of a new life (not of a new game)
        self.num_envs = num_envs
        self.obs_shape = (history_length, 84, 84)
        self.num_actions = int(self.env.single_action_space.n)
        self.tracker = EpisodeTracker(num_envs)
        self.lives = np.zeros(num_envs, dtype=np.int64)
        self.last_obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self.seed)
        self.lives = info["lives"].copy()
        self.fire_next[:] = False
        self.tracker.reset()
        self.last_obs = obs
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = actions.astype(np.int32)
        if self.fire_action is not None:
            actions = np.where(self.fire_next, self.fire_action, actions).astype(np.int32)
        obs, rewards, game_over, truncated, info = self.env.step(actions)
        ended = game_over | truncated
        lost_life = (info["lives"] < self.lives) & ~ended
        self.fire_next = lost_life
        self.lives = info["lives"].copy()
        final_obs = obs.copy()
        if ended.any():
            final_obs[ended] = info["final_obs"][ended]
        terminated = game_over | (lost_life if self.episodic_life else False)
        rewards = rewards.astype(np.float32)
        episodes = self.tracker.step(rewards, ended)
        self.last_obs = obs
        return StepResult(obs, rewards, terminated, truncated, final_obs, episodes)

    def render(self, index: int = 0) -> np.ndarray:
        return np.repeat(self.last_obs[index, -1, :, :, None], 3, axis=-1)

    def close(self) -> None:
        self.env.close()


def fire_action_index(game: str) -> int | None:
    """Index of FIRE in the game's minimal action set (the vector env's actions), None without one."""
    import ale_py

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(game))
    actions = list(ale.getMinimalActionSet())
    return actions.index(ale_py.Action.FIRE) if ale_py.Action.FIRE in actions else None
