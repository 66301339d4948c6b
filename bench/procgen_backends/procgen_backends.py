"""Run the same Procgen rollout through procgen-mirror (gym3), procgen-gym or envpool.

Every backend returns the same record (numpy arrays, HWC uint8 frames):
  hashes      (T+1, N) uint64  blake2b-64 of each frame; row 0 is the initial observation
  rewards     (T, N)   float32
  firsts      (T, N)   bool    gym3 `first`: obs[t+1] starts a new game (episode ended at step t)
  level_seed  (T+1, N) int32   info level_seed of the level shown in each frame
  first_frames, last_frames (N, 64, 64, 3) uint8
Only the Python standard library and numpy are needed here (works on 3.11-3.13, numpy 1 or 2).
"""

from __future__ import annotations

import hashlib

import numpy as np

GAMES = ("starpilot", "coinrun", "bigfish", "bossfight")
DEFAULTS = dict(num_envs=4, start_level=0, num_levels=200, distribution_mode="easy", rand_seed=0, steps=300)


def actions_for(steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 15, size=(steps, num_envs)).astype(np.int32)


def frame_hash(frame: np.ndarray) -> np.uint64:
    digest = hashlib.blake2b(np.ascontiguousarray(frame, dtype=np.uint8).tobytes(), digest_size=8).digest()
    return np.frombuffer(digest, dtype="<u8")[0]


def hash_batch(obs: np.ndarray) -> np.ndarray:
    return np.array([frame_hash(o) for o in obs], dtype=np.uint64)


# ---------------------------------------------------------------- procgen's level-seed derivation
def mt19937_outputs(seed: int, count: int) -> np.ndarray:
    """First `count` raw 32-bit outputs of std::mt19937(seed) (numpy's legacy seeding is the same
    init_genrand as std::mt19937::seed)."""
    state = np.random.RandomState(seed & 0xFFFFFFFF).get_state()
    bitgen = np.random.MT19937()
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": state[1], "pos": state[2]}}
    return bitgen.random_raw(count).astype(np.uint64)


def procgen_env_rng_seeds(rand_seed: int, num_envs: int) -> list[int]:
    """vecgame.cpp: RandGen game_level_seed_gen; game_level_seed_gen.seed(rand_seed);
    games[n]->level_seed_rand_gen.seed(game_level_seed_gen.randint())  -- randint() returns the raw
    uint32 output cast to int. Returned here as signed int32 (the same bits envpool needs)."""
    raw = mt19937_outputs(rand_seed, num_envs)
    return [int(np.int64(x) - (1 << 32) if x >= (1 << 31) else x) for x in raw]


def procgen_level_sequence(env_rng_seed: int, start_level: int, num_levels: int, count: int) -> list[int]:
    """game.cpp Game::reset(): current_level_seed = level_seed_rand_gen.randint(low, high)
    = low + (uint32 output % (high - low)); num_levels == 0 means [0, INT32_MAX)."""
    low, high = (0, 2**31 - 1) if num_levels == 0 else (start_level, start_level + num_levels)
    return [int(low + (x % (high - low))) for x in mt19937_outputs(env_rng_seed, count)]


# ---------------------------------------------------------------- backends
class Recorder:
    def __init__(self, steps: int, num_envs: int):
        self.hashes = np.zeros((steps + 1, num_envs), np.uint64)
        self.level_seed = np.zeros((steps + 1, num_envs), np.int32)
        self.rewards = np.zeros((steps, num_envs), np.float32)
        self.firsts = np.zeros((steps, num_envs), bool)
        self.first_frames = None
        self.last_frames = None

    def start(self, obs, level_seed):
        self.hashes[0] = hash_batch(obs)
        self.level_seed[0] = level_seed
        self.first_frames = np.array(obs, dtype=np.uint8)

    def step(self, t, obs, rew, first, level_seed):
        self.hashes[t + 1] = hash_batch(obs)
        self.level_seed[t + 1] = level_seed
        self.rewards[t] = rew
        self.firsts[t] = first
        self.last_frames = np.array(obs, dtype=np.uint8)

    def as_dict(self):
        return dict(
            hashes=self.hashes,
            level_seed=self.level_seed,
            rewards=self.rewards,
            firsts=self.firsts,
            first_frames=self.first_frames,
            last_frames=self.last_frames,
        )


def run_procgen_mirror(game, num_envs, start_level, num_levels, distribution_mode, rand_seed, steps, num_threads=2):
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    env = ProcgenGym3Env(
        num=num_envs,
        env_name=game,
        num_levels=num_levels,
        start_level=start_level,
        distribution_mode=distribution_mode,
        rand_seed=rand_seed,
        num_threads=num_threads,
    )
    acts = actions_for(steps, num_envs)
    rec = Recorder(steps, num_envs)

    def seeds():
        return np.array([i["level_seed"] for i in env.get_info()], np.int32)

    _, obs, _ = env.observe()
    rec.start(obs["rgb"], seeds())
    for t in range(steps):
        env.act(acts[t])
        rew, obs, first = env.observe()
        rec.step(t, obs["rgb"], rew, first, seeds())
    env.close()
    return rec.as_dict()


def run_procgen_gym(game, num_envs, start_level, num_levels, distribution_mode, rand_seed, steps, num_threads=2):
    from procgen_gym import ProcgenVecEnv

    env = ProcgenVecEnv(
        num_envs=num_envs,
        env_name=game,
        num_levels=num_levels,
        start_level=start_level,
        distribution_mode=distribution_mode,
        rand_seed=rand_seed,
        num_threads=num_threads,
    )
    acts = actions_for(steps, num_envs)
    rec = Recorder(steps, num_envs)
    obs, info = env.reset()
    rec.start(obs, info["level_seed"])
    for t in range(steps):
        obs, rew, term, trunc, info = env.step(acts[t])
        rec.step(t, obs, rew, term | trunc, info["level_seed"])
    env.close()
    return rec.as_dict()


def envpool_task(game, distribution_mode):
    return f"{game.capitalize()}{distribution_mode.capitalize()}-v0"


def make_envpool(game, num_envs, start_level, num_levels, distribution_mode, seed, num_threads=2):
    """seed: int (procgen's rand_seed: env i's level generator gets the i-th output of mt19937(seed)) or a list
    (env i's level generator is seeded with seed[i] directly; envpool >= 1.2 `env_seed`)."""
    import envpool

    return envpool.make(
        envpool_task(game, distribution_mode),
        env_type="gymnasium",
        num_envs=num_envs,
        batch_size=num_envs,
        seed=seed,
        num_levels=num_levels,
        start_level=start_level,
        channel_first=False,
        num_threads=num_threads,
    )


def run_envpool(
    game,
    num_envs,
    start_level,
    num_levels,
    distribution_mode,
    rand_seed,
    steps,
    num_threads=2,
    seed_mapping="procgen",
    skip_reset_steps=False,
):
    """seed_mapping: "naive" -> envpool seed=rand_seed (one int);
    "procgen" -> per-env seeds derived as procgen's vecgame.cpp does (procgen_env_rng_seeds).
    skip_reset_steps: after an env reports done, envpool spends the next step on Reset() (the action is
    ignored). With True, each env runs in its own pool and that extra reset step is taken right after the done
    step without consuming an action; the done row records the reset step's frame and level (what procgen's
    same-step autoreset shows) with the done step's reward, so the record lines up step-for-step with procgen."""
    # envpool 1.2.7, measured: with an int seed S, env i's level generator is seeded with the i-th output
    # of mt19937(S), exactly as procgen's vecgame.cpp does, so "naive" already gives procgen's levels;
    # with a list, env i's level generator is seeded with seed[i] directly, so "procgen" gives them too.
    seeds = procgen_env_rng_seeds(rand_seed, num_envs) if seed_mapping == "procgen" else None
    assert not (skip_reset_steps and seeds is None), "single-env pools need per-env seeds (seed_mapping='procgen')"
    acts = actions_for(steps, num_envs)
    rec = Recorder(steps, num_envs)
    if not skip_reset_steps:
        env = make_envpool(
            game,
            num_envs,
            start_level,
            num_levels,
            distribution_mode,
            seeds if seeds is not None else rand_seed,
            num_threads,
        )
        obs, info = env.reset()
        rec.start(obs, info["level_seed"])
        for t in range(steps):
            obs, rew, term, trunc, info = env.step(acts[t])
            rec.step(t, obs, rew, term | trunc, info["level_seed"])
        env.close()
        return rec.as_dict()
    # one single-env pool per env, so one env can take its extra reset step alone
    envs = [make_envpool(game, 1, start_level, num_levels, distribution_mode, [seeds[i]], 1) for i in range(num_envs)]
    first_obs, first_seed = zip(*[(o[0], i["level_seed"][0]) for o, i in (e.reset() for e in envs)], strict=False)
    rec.start(np.stack(first_obs), np.array(first_seed))
    for t in range(steps):
        out = []
        for i, e in enumerate(envs):
            obs, rew, term, trunc, info = e.step(acts[t, i : i + 1])
            done = bool(term[0] | trunc[0])
            if done:  # obs is the true last frame; procgen shows the next level's first frame instead
                obs, _, _, _, info = e.step(np.array([0], np.int32))  # envpool's Reset() step; action ignored
            out.append((obs[0], rew[0], done, info["level_seed"][0]))
        o, r, d, s = zip(*out, strict=False)
        rec.step(t, np.stack(o), np.array(r), np.array(d), np.array(s))
    for e in envs:
        e.close()
    return rec.as_dict()


BACKENDS = {"procgen_mirror": run_procgen_mirror, "procgen_gym": run_procgen_gym, "envpool": run_envpool}
