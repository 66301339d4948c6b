"""Vectorized pixel games with frame stacking: Crafter, Procgen and Atari behind one shape.

Every vector env built by `make_vec_env` follows one contract (`VecEnv`):
- `reset() -> obs` and `step(actions) -> StepResult`; obs is uint8 (num_envs, K*C, H, W): the K most
  recent frames of C channels each, oldest first, zeros before an episode's first frame.
- Autoreset is SAME_STEP: when an episode ends at a step, `obs[i]` is already the first observation of
  the next episode and the true last observation is `final_obs[i]` (needed to bootstrap truncations).
- `rewards` are the raw game rewards; `terminated` / `truncated` are the training signals (Atari's
  episodic life marks a lost life as terminated); `episodes` reports finished *full* games with their
  raw return and length (Crafter: also the achievements unlocked).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

# Crafter's world generation uses opensimplex, which JIT-compiles with numba when it is installed
# (~15x faster resets). Cache the compiled code on disk so each worker compiles only once per machine.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pixelppo-numba"))

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
FAMILIES = ("crafter", "procgen", "atari")
EVAL_SEED_OFFSET = 1_000_003  # eval envs never share seeds with training envs


class UsageError(ValueError):
    """Bad user input (unknown game, impossible sizes, unusable file). CLIs print it on one line, exit 2."""


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


@dataclass(frozen=True)
class EnvSpec:
    """A parsed `--env` value: game family and game name."""

    family: str
    game: str

    @property
    def name(self) -> str:
        return self.family if self.family == "crafter" else f"{self.family}/{self.game}"


def parse_env_id(env_id: str) -> EnvSpec:
    """`crafter`, `procgen/<game>`, `atari/<Game>` or a gymnasium id like `ALE/Breakout-v5`."""
    text = env_id.strip()
    if text.lower() == "crafter":
        return EnvSpec("crafter", "crafter")
    ale = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v\d+", text)
    family, _, game = ("atari", "", ale.group(1)) if ale else text.partition("/")
    family = family.lower()
    if family == "procgen" and game.lower() in PROCGEN_GAMES:
        return EnvSpec("procgen", game.lower())
    if family == "atari" and game:
        return EnvSpec("atari", atari_rom_id(game))
    if family == "procgen":
        raise UsageError(f"unknown Procgen game {game!r}; choose one of: {', '.join(PROCGEN_GAMES)}")
    raise UsageError(f"unknown env {env_id!r}; use crafter, procgen/<game> or atari/<Game> (e.g. atari/Breakout)")


def atari_rom_id(game: str) -> str:
    """`Breakout`, `MsPacman`, `ms_pacman` -> ALE ROM id, checked against the bundled ROMs."""
    from ale_py import roms

    rom = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", game).lower()
    known = roms.get_all_rom_ids()
    if rom not in known:
        close = [k for k in known if k.replace("_", "").startswith(rom.replace("_", "")[:4])]
        hint = f"; did you mean: {', '.join(close[:5])}" if close else ""
        raise UsageError(f"unknown Atari game {game!r}{hint}")
    return rom


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
    def render(self) -> np.ndarray:
        """RGB frames (N, H, W, 3) uint8 of the current state, for videos."""

    def close(self) -> None:
        return None

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------- Crafter


def _crafter_worker(conn, seeds: list[int]) -> None:
    """Runs several Crafter envs in one process; answers 'reset' and 'step' commands over `conn`."""
    with contextlib.redirect_stderr(io.StringIO()):  # crafter imports old gym, which prints a banner
        import crafter

    envs = [crafter.Env(seed=s) for s in seeds]
    n = len(envs)
    try:
        while True:
            cmd, data = conn.recv()
            if cmd == "reset":
                conn.send(np.stack([e.reset() for e in envs]))
            elif cmd == "step":
                obs = np.empty((n, 64, 64, 3), np.uint8)
                final = np.empty_like(obs)
                rewards = np.zeros(n, np.float32)
                terminated = np.zeros(n, bool)
                truncated = np.zeros(n, bool)
                achievements: list[dict | None] = [None] * n
                for i, (env, action) in enumerate(zip(envs, data, strict=True)):
                    obs[i], rewards[i], done, info = env.step(int(action))
                    final[i] = obs[i]
                    if done:
                        terminated[i] = info["discount"] == 0  # died
                        truncated[i] = not terminated[i]  # reached the episode length
                        achievements[i] = dict(info["achievements"])
                        obs[i] = env.reset()
                conn.send((obs, final, rewards, terminated, truncated, achievements))
            elif cmd == "render":
                conn.send(np.stack([e.render() for e in envs]))
            elif cmd == "close":
                break
    except (KeyboardInterrupt, EOFError):
        pass
    finally:
        conn.close()


class CrafterVecEnv(VecEnv):
    """Crafter envs spread over worker processes (several envs per worker, one worker per core)."""

    frame_channels = 3
    num_actions = 17

    def __init__(self, num_envs: int, seed: int, history_length: int, num_workers: int | None = None):
        self.num_envs = num_envs
        self.obs_shape = (3 * history_length, 64, 64)
        workers = max(1, min(num_envs, num_workers or os.cpu_count() or 1))
        self.slices = [s for s in np.array_split(np.arange(num_envs), workers)]
        ctx = mp.get_context("spawn")  # no inherited torch threads or locks in the workers
        self.conns, self.procs = [], []
        for idx in self.slices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_crafter_worker, args=(child, [seed + int(i) for i in idx]), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.frames = FrameStack(num_envs, (3, 64, 64), history_length)
        self.tracker = EpisodeTracker(num_envs)

    def _gather(self, cmd: str, data: list | None = None) -> list:
        for conn, d in zip(self.conns, data or [None] * len(self.conns), strict=True):
            conn.send((cmd, d))
        return [conn.recv() for conn in self.conns]

    def reset(self) -> np.ndarray:
        frames = np.concatenate(self._gather("reset")).transpose(0, 3, 1, 2)
        self.frames.reset(frames)
        self.tracker.reset()
        return self.frames.stack.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        parts = self._gather("step", [actions[idx] for idx in self.slices])
        obs, final, rewards, terminated, truncated = (np.concatenate(x) for x in list(zip(*parts, strict=True))[:5])
        achievements = [a for p in parts for a in p[5]]
        ended = terminated | truncated
        final_obs = self.frames.step(obs.transpose(0, 3, 1, 2), final.transpose(0, 3, 1, 2), ended)
        episodes = self.tracker.step(rewards, ended, achievements)
        return StepResult(self.frames.stack.copy(), rewards, terminated, truncated, final_obs, episodes)

    def render(self) -> np.ndarray:
        return np.concatenate(self._gather("render"))

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("close", None))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.conns, self.procs = [], []


# ----------------------------------------------------------------------------------------- Procgen


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
            num_threads=min(4, os.cpu_count() or 1),
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

    def render(self) -> np.ndarray:
        return np.ascontiguousarray(self.frames.stack[:, -3:].transpose(0, 2, 3, 1))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


# ------------------------------------------------------------------------------------------- Atari


class AtariVecEnv(VecEnv):
    """ALE's C++ vector env with the standard preprocessing (84x84 gray, frameskip 4 with max-pool,
    30 no-op starts, fire reset, frame stack) and raw rewards.

    With `episodic_life` a lost life is reported as terminated (a training-only trick) while the game
    goes on; `episodes` always reports full games, so returns are those of whole games.
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
            num_threads=min(num_envs, os.cpu_count() or 1),
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
        self.num_envs = num_envs
        self.obs_shape = (history_length, 84, 84)
        self.num_actions = int(self.env.single_action_space.n)
        self.tracker = EpisodeTracker(num_envs)
        self.lives = np.zeros(num_envs, dtype=np.int64)
        self.last_obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self.seed)
        self.lives = info["lives"].copy()
        self.tracker.reset()
        self.last_obs = obs
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs, rewards, game_over, truncated, info = self.env.step(actions.astype(np.int32))
        ended = game_over | truncated
        lost_life = (info["lives"] < self.lives) & ~ended
        self.lives = info["lives"].copy()
        final_obs = obs.copy()
        if ended.any():
            final_obs[ended] = info["final_obs"][ended]
        terminated = game_over | (lost_life if self.episodic_life else False)
        rewards = rewards.astype(np.float32)
        episodes = self.tracker.step(rewards, ended)
        self.last_obs = obs
        return StepResult(obs, rewards, terminated, truncated, final_obs, episodes)

    def render(self) -> np.ndarray:
        return np.repeat(self.last_obs[:, -1, :, :, None], 3, axis=-1)

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------------------------- Factory


def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    history_length: int,
    evaluation: bool = False,
    distribution_mode: str = "easy",
    start_level: int = 0,
    num_levels: int = 200,
    episodic_life: bool = True,
    repeat_action_probability: float = 0.0,
) -> VecEnv:
    """Build the vector env for `env_id`; `evaluation` gives separate seeds, full Atari games and
    unseen Procgen levels (the whole level distribution, `num_levels=0`)."""
    spec = parse_env_id(env_id)
    if num_envs < 1 or history_length < 1:
        raise UsageError("num_envs and history_length must be at least 1")
    if evaluation:
        seed += EVAL_SEED_OFFSET
    if spec.family == "crafter":
        return CrafterVecEnv(num_envs, seed, history_length)
    if spec.family == "procgen":
        if distribution_mode not in ("easy", "hard", "extreme", "memory", "exploration"):
            raise UsageError(f"unknown Procgen distribution mode {distribution_mode!r}")
        if start_level < 0 or num_levels < 0:
            raise UsageError("Procgen start_level and num_levels must be >= 0")
        levels = (0, 0) if evaluation else (start_level, num_levels)
        return ProcgenVecEnv(spec.game, num_envs, seed, history_length, distribution_mode, *levels)
    return AtariVecEnv(
        spec.game, num_envs, seed, history_length, episodic_life and not evaluation, repeat_action_probability
    )
