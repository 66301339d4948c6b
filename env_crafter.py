"""Crafter behind the `VecEnv` shape: envs spread over worker processes that are restarted when they crash,
the game made reproducible and fast (crafter_fast.py), and its saved worlds restored without running code."""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import io
import multiprocessing as mp
import os
import pickle
import signal
import sys
import warnings

import numpy as np

from errors import UsageError
from vecenv import EnvCrashError, EpisodeTracker, FrameStack, StepResult, VecEnv, cpus_per_process

# Crafter's world generation uses opensimplex, which JIT-compiles with numba when it is installed
# (~15x faster resets). Cache the compiled code on disk so each worker compiles only once per machine.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pixelppo-numba"))

CRAFTER_PICKLE_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "defaultdict"), ("collections", "OrderedDict"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._mt19937", "MT19937"),  # numpy 2 pickles the bit generator class itself
}  # fmt: skip
CRAFTER_PICKLE_MOVED = {  # (module, name) a saved state may name -> where that class lives now
    ("env", "InsertionOrderedSet"): (__name__, "InsertionOrderedSet"),  # states saved before env.py was split
}


class CrafterUnpickler(pickle.Unpickler):
    """Restores Crafter worlds without running arbitrary code: only Crafter and numpy classes load. States
    pickled under numpy 1 (numpy.core) and numpy 2 (numpy._core) load under either, and states that name a
    class by the module it has since left (CRAFTER_PICKLE_MOVED) load from its new one."""

    def find_class(self, module: str, name: str):
        module, name = CRAFTER_PICKLE_MOVED.get((module, name), (module, name))
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
    # Ctrl-C and a SIGTERM to the whole process group (timeout, SLURM, kill -TERM -PGID) are the trainer's to
    # handle: it saves these games, then closes us (and we end when its end of the pipe closes, however it dies)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
        atexit.register(self.close)  # before multiprocessing's own exit hook, which would wait on them forever
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
        atexit.unregister(self.close)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("close", None))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.conns, self.procs = [], []
