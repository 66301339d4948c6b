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

import collections
import contextlib
import importlib
import io
import multiprocessing as mp
import os
import pickle
import re
import signal
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from errors import UsageError

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
PROCGEN_MODES = ("easy", "hard", "extreme", "memory", "exploration")
FAMILIES = ("crafter", "procgen", "atari")
EVAL_SEED_OFFSET = 1_000_003  # eval envs never share seeds with training envs


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


def cpus_per_process() -> int:
    """The CPU cores this process may use (its affinity mask, as SLURM and containers set it), shared with the
    other processes torchrun started on this machine."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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


# ----------------------------------------------------------------------------------------- Crafter


class EnvCrashError(RuntimeError):
    """Env workers crashed more often than allowed."""


CRAFTER_PICKLE_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "defaultdict"), ("collections", "OrderedDict"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._mt19937", "MT19937"),  # numpy 2 pickles the bit generator class itself
}  # fmt: skip


class CrafterUnpickler(pickle.Unpickler):
    """Restores Crafter worlds without running arbitrary code: only Crafter and numpy classes load. States
    pickled under numpy 1 (numpy.core) and numpy 2 (numpy._core) load under either."""

    def find_class(self, module: str, name: str):
        numpy_1 = module.replace("numpy._core", "numpy.core", 1) if module.startswith("numpy._core") else module
        allowed = (numpy_1, name) in CRAFTER_PICKLE_ALLOWED or (module, name) in (
            (__name__, "InsertionOrderedSet"),
            ("crafter_fast", "LocalView"),
            ("crafter_fast", "ItemView"),
        )
        if not (allowed or module in ("crafter.env", "crafter.engine", "crafter.objects")):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a Crafter env state")
        if numpy_1 != module or module.startswith("numpy.core"):
            return getattr(importlib.import_module(numpy_core_module(numpy_1)), name)
        return super().find_class(module, name)


def numpy_core_module(numpy_1_name: str) -> str:
    """numpy.core.X as this numpy names it: numpy._core.X under numpy 2 (whose numpy.core only warns and forwards)."""
    numpy_2 = int(np.__version__.split(".")[0]) >= 2
    return numpy_1_name.replace("numpy.core", "numpy._core", 1) if numpy_2 else numpy_1_name


CRAFTER_VIDEO_SIZE = (256, 256)  # crafter draws its view at any size: videos get a sharp 256x256


class InsertionOrderedSet(dict):
    """The set interface Crafter's World keeps its per-chunk objects in, iterated in insertion order.
    Crafter's own plain sets of objects iterate in memory-address order, so which creature despawns
    differed between processes for the same seed; with this, a seed gives one trajectory."""

    def add(self, item) -> None:
        self[item] = None

    def remove(self, item) -> None:
        del self[item]


def _import_crafter():
    with contextlib.redirect_stderr(io.StringIO()):  # crafter imports old gym, which prints a banner
        import crafter
    from crafter import engine

    import crafter_fast

    crafter.env.worldgen = crafter_fast  # the same worlds, ~10x faster (tests/test_crafter_fast.py)
    if not getattr(engine.World.reset, "ordered_chunks", False):
        original_reset = engine.World.reset

        def reset(world, seed=None):
            original_reset(world, seed)
            world._chunks = collections.defaultdict(InsertionOrderedSet)

        reset.ordered_chunks = True
        engine.World.reset = reset
    return crafter


def make_crafter(seed: int):
    """The Crafter game as the paper defines it (64x64 view, 10000-step episodes), made reproducible,
    with vectorized world generation and drawing (the same worlds and frames, tests/test_crafter_fast.py)."""
    import crafter_fast

    env = _import_crafter().Env(seed=seed)
    crafter_fast.speed_up(env)
    return env


def _crafter_step(envs: list, actions: np.ndarray) -> tuple:
    n = len(envs)
    obs = np.empty((n, 64, 64, 3), np.uint8)
    final = np.empty_like(obs)
    rewards = np.zeros(n, np.float32)
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    achievements: list[dict | None] = [None] * n
    for i, action in enumerate(actions):
        obs[i], rewards[i], done, info = envs[i].step(int(action))
        final[i] = obs[i]
        if done:
            terminated[i] = info["discount"] == 0  # died
            truncated[i] = not terminated[i]  # reached the episode length
            achievements[i] = dict(info["achievements"])
            obs[i] = envs[i].reset()
    return obs, final, rewards, terminated, truncated, achievements


def _crafter_worker(conn, seeds: list[int], env_fn) -> None:
    """Runs several Crafter envs in one process, answering commands over `conn` with ("ok", reply).
    An exception inside the game is sent back as ("error", message) and ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle: it saves, then closes us
    _import_crafter()  # before any unpickling, so restored worlds get the same patched classes
    envs = []
    try:
        while True:
            cmd, data = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "reset":  # new env objects: every reset replays the same worlds for the same seeds
                    envs = [env_fn(s) for s in seeds]
                    reply = np.stack([e.reset() for e in envs])
                elif cmd == "step":
                    reply = _crafter_step(envs, data)
                elif cmd == "render":
                    reply = envs[data].render(CRAFTER_VIDEO_SIZE)
                elif cmd == "get_state":
                    reply = pickle.dumps(envs, protocol=pickle.HIGHEST_PROTOCOL)
                elif cmd == "set_state":
                    envs = CrafterUnpickler(io.BytesIO(data)).load()
                    reply = None
                else:
                    raise ValueError(f"unknown command {cmd!r}")
            except Exception as e:  # report any game failure to the parent, which restarts this worker
                conn.send(("error", f"{type(e).__name__}: {e}"))
                break
            conn.send(("ok", reply))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    finally:
        conn.close()


@contextlib.contextmanager
def _main_script_hidden():
    """Start spawned workers without re-running the parent's main script: a worker needs only this
    module, while train.py's imports (torch, timm, wandb) would cost each worker ~1 GB and seconds."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


class CrafterVecEnv(VecEnv):
    """Crafter envs spread over worker processes (several envs per worker, one worker per core).

    A worker that dies or whose game raises is reported with its env indices and the exception and
    restarted; its envs start new episodes (the cut ones count as truncated). More than `max_crashes`
    crashes raise EnvCrashError.
    """

    frame_channels = 3
    num_actions = 17

    def __init__(
        self,
        num_envs: int,
        seed: int,
        history_length: int,
        num_workers: int | None = None,
        max_crashes: int = 3,
        env_fn=make_crafter,
    ):
        self.num_envs, self.seed, self.env_fn, self.max_crashes = num_envs, seed, env_fn, max_crashes
        self.obs_shape = (3 * history_length, 64, 64)
        workers = max(1, min(num_envs, num_workers or cpus_per_process()))
        self.slices = list(np.array_split(np.arange(num_envs), workers))
        self.ctx = mp.get_context("spawn")  # no inherited torch threads or locks in the workers
        self.conns: list = [None] * workers
        self.procs: list = [None] * workers
        self.crashes = 0
        for w in range(workers):
            self._start_worker(w)
        self.frames = FrameStack(num_envs, (3, 64, 64), history_length)
        self.tracker = EpisodeTracker(num_envs)

    def _start_worker(self, w: int) -> None:
        seeds = [self.seed + int(i) + 7919 * self.crashes for i in self.slices[w]]  # new worlds after a crash
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_crafter_worker, args=(child, seeds, self.env_fn), daemon=True)
        with _main_script_hidden():
            proc.start()
        child.close()
        self.conns[w], self.procs[w] = parent, proc

    def _restart_worker(self, w: int, reason: str) -> np.ndarray:
        """Replace crashed worker `w`; -> first frames (n_w, 64, 64, 3) of its envs' new episodes."""
        self.crashes += 1
        idx = self.slices[w]
        message = f"Crafter env worker {w} (envs {idx[0]}-{idx[-1]}) crashed: {reason}"
        if self.crashes > self.max_crashes:
            raise EnvCrashError(f"{message}; {self.crashes} crashes, more than the allowed {self.max_crashes}")
        warnings.warn(f"{message}; restarting it (crash {self.crashes} of at most {self.max_crashes})", stacklevel=3)
        with contextlib.suppress(OSError):
            self.conns[w].close()
        self.procs[w].kill()
        self._start_worker(w)
        return self._call(w, "reset")

    def _call(self, w: int, cmd: str, data=None):
        self.conns[w].send((cmd, data))
        return self._receive(w)

    def _receive(self, w: int):
        status, reply = self.conns[w].recv()
        if status == "error":
            raise EnvCrashError(reply)
        return reply

    def _gather(self, cmd: str, data: list | None = None) -> list:
        """Send one command to every worker, then collect the replies: None for a worker that crashed."""
        for w, conn in enumerate(self.conns):
            with contextlib.suppress(OSError):
                conn.send((cmd, None if data is None else data[w]))
        replies = []
        for w in range(len(self.conns)):
            try:
                replies.append(self._receive(w))
            except (EOFError, OSError, EnvCrashError) as e:
                exitcode = self.procs[w].exitcode
                reason = str(e) if isinstance(e, EnvCrashError) else f"worker process died (exit code {exitcode})"
                replies.append(("crashed", reason))
        return replies

    def reset(self) -> np.ndarray:
        replies = self._gather("reset")
        frames = [self._restart_worker(w, r[1]) if isinstance(r, tuple) else r for w, r in enumerate(replies)]
        self.frames.reset(np.concatenate(frames).transpose(0, 3, 1, 2))
        self.tracker.reset()
        return self.frames.stack.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        replies = self._gather("step", [actions[idx] for idx in self.slices])
        crashed = np.zeros(self.num_envs, bool)
        for w, reply in enumerate(replies):
            if isinstance(reply[0], str):  # ("crashed", reason): the episodes of its envs are cut here
                first = self._restart_worker(w, reply[1])
                last = self.frames.stack[self.slices[w], -3:].transpose(0, 2, 3, 1)
                n = len(first)
                replies[w] = (first, last, np.zeros(n, np.float32), np.zeros(n, bool), np.ones(n, bool), [None] * n)
                crashed[self.slices[w]] = True
        obs, final, rewards, terminated, truncated = (np.concatenate(x) for x in list(zip(*replies, strict=True))[:5])
        achievements = [a for r in replies for a in r[5]]
        ended = terminated | truncated
        final_obs = self.frames.step(obs.transpose(0, 3, 1, 2), final.transpose(0, 3, 1, 2), ended)
        episodes = self.tracker.step(rewards, ended & ~crashed, achievements)
        self.tracker.discard(crashed)
        return StepResult(self.frames.stack.copy(), rewards, terminated, truncated, final_obs, episodes)

    def render(self, index: int = 0) -> np.ndarray:
        w = next(w for w, idx in enumerate(self.slices) if index in idx)
        return self._call(w, "render", int(index - self.slices[w][0]))

    def get_state(self) -> dict:
        worlds = [self._call(w, "get_state") for w in range(len(self.conns))]
        return {"worlds": worlds, "frames": self.frames.stack.copy(), **self.tracker.state_dict()}

    def set_state(self, state: dict) -> np.ndarray:
        if len(state["worlds"]) != len(self.conns) or state["frames"].shape != self.frames.stack.shape:
            raise UsageError("saved Crafter env state does not match this run's envs and workers")
        for w, worlds in enumerate(state["worlds"]):
            self._call(w, "set_state", worlds)
        self.frames.stack[:] = state["frames"]
        self.tracker.load_state_dict(state)
        return self.frames.stack.copy()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
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


# ------------------------------------------------------------------------------------------- Atari


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


# ---------------------------------------------------------------------------------------- Factory


def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    history_length: int,
    evaluation: bool = False,
    max_crashes: int = 3,
    num_workers: int | None = None,
    distribution_mode: str = "easy",
    start_level: int = 0,
    num_levels: int = 200,
    episodic_life: bool = True,
    repeat_action_probability: float = 0.0,
) -> VecEnv:
    """Build the vector env for `env_id`; `evaluation` gives separate seeds and full Atari games (the
    Procgen levels are the caller's choice: evaluation.make_eval_env picks unseen ones)."""
    spec = parse_env_id(env_id)
    if num_envs < 1 or history_length < 1:
        raise UsageError("num_envs and history_length must be at least 1")
    if evaluation:
        seed += EVAL_SEED_OFFSET
    if spec.family == "crafter":
        return CrafterVecEnv(num_envs, seed, history_length, num_workers, max_crashes=max_crashes)
    if spec.family == "procgen":
        if distribution_mode not in PROCGEN_MODES:
            raise UsageError(f"unknown Procgen distribution mode {distribution_mode!r}")
        if start_level < 0 or num_levels < 0:
            raise UsageError("Procgen start_level and num_levels must be >= 0")
        return ProcgenVecEnv(spec.game, num_envs, seed, history_length, distribution_mode, start_level, num_levels)
    return AtariVecEnv(
        spec.game, num_envs, seed, history_length, episodic_life and not evaluation, repeat_action_probability
    )
