"""Random-action throughput of one Procgen backend: python throughput.py BACKEND GAME [num_envs] [threads] [seconds]
Prints one JSON line with env steps per second (num_envs * batched steps / wall time)."""

import json
import sys
import time

import numpy as np

backend, game = sys.argv[1], sys.argv[2]
num_envs = int(sys.argv[3]) if len(sys.argv) > 3 else 64
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
acts = np.random.default_rng(0).integers(0, 15, size=(1000, num_envs)).astype(np.int32)
common = dict(num_levels=200, start_level=0)

if backend == "procgen_mirror":
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    env = ProcgenGym3Env(
        num=num_envs, env_name=game, distribution_mode="easy", rand_seed=0, num_threads=threads, **common
    )
    env.observe()

    def step(a):
        env.act(a)
        return env.observe()
elif backend == "procgen_gym":
    from procgen_gym import ProcgenVecEnv

    env = ProcgenVecEnv(
        num_envs=num_envs, env_name=game, distribution_mode="easy", rand_seed=0, num_threads=threads, **common
    )
    env.reset()
    step = env.step
elif backend.startswith("envpool"):
    import envpool

    env = envpool.make(
        f"{game.capitalize()}Easy-v0",
        env_type="gymnasium",
        num_envs=num_envs,
        batch_size=num_envs,
        seed=0,
        num_threads=threads,
        channel_first=backend != "envpool_hwc",
        **common,
    )
    env.reset()
    step = env.step
else:
    raise SystemExit(f"unknown backend {backend}")

for i in range(20):  # warm-up
    step(acts[i])
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    step(acts[n % 1000])
    n += 1
dt = time.perf_counter() - t0
print(
    json.dumps(
        {
            "backend": backend,
            "game": game,
            "num_envs": num_envs,
            "threads": threads,
            "steps_per_s": round(n * num_envs / dt),
            "seconds": round(dt, 1),
        }
    )
)
