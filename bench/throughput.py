"""Throughput benchmark: `python bench/throughput.py [--quick] [--only crafter_env,update_cache,...]`.

Prints one JSON object. Every goal is a ratio against a baseline measured in the same run, because
these machines are noisy:
- crafter_env: our Crafter vector env against N x the single-env stepping rate of crafter as installed
  without resets, against N x our own single-env rate (are resets hidden?), and against gymnasium's
  AsyncVectorEnv over crafter as installed, with numba world generation and without.
- update_cache: the PPO update with a frozen backbone on cached features against recomputing the
  backbone in every epoch, and whether the learned heads come out the same.
- training: training steps/s of train.py's loop per family with its time split and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import PPO  # noqa: E402
from buffer import RolloutBuffer  # noqa: E402
from env import CrafterVecEnv, make_crafter  # noqa: E402
from policy import ActorCritic, PolicySpec  # noqa: E402


def peak_rss_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"process_mb": round(own, 1), "largest_child_mb": round(children, 1)}


# ---------------------------------------------------------------------------------------- Crafter


def crafter_as_installed(seed: int):
    """crafter.Env exactly as the package ships it: its own world generation and drawing."""
    import crafter

    return crafter.Env(seed=seed)


def single_env_rate(make, steps: int) -> float:
    """One Crafter env in this process: steps/s while stepping, resets excluded."""
    env = make(0)
    env.reset()
    rng = np.random.default_rng(0)
    stepping = 0.0
    for _ in range(steps):
        tic = time.perf_counter()
        _, _, done, _ = env.step(int(rng.integers(17)))
        stepping += time.perf_counter() - tic
        if done:
            env.reset()
    return steps / stepping


def ours_rate(num_envs: int, seconds: float) -> float:
    rng = np.random.default_rng(0)
    with CrafterVecEnv(num_envs, seed=0, history_length=1) as envs:
        envs.reset()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            envs.step(rng.integers(0, 17, num_envs))
            steps += num_envs
        return steps / (time.perf_counter() - start)


class GymnasiumCrafter:
    """Crafter as installed behind the gymnasium API, the way users wrap it for gymnasium's vector envs."""

    def __init__(self, seed: int):
        import gymnasium

        self.env = crafter_as_installed(seed)
        self.observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(17)
        self.metadata, self.render_mode, self.spec, self.np_random = {}, None, None, None

    def reset(self, seed=None, options=None):
        return self.env.reset(), {}

    def step(self, action):
        obs, reward, done, info = self.env.step(int(action))
        dead = info["discount"] == 0
        return obs, reward, dead, done and not dead, {}

    def close(self):
        pass


def _gym_crafter(seed: int):
    return lambda: GymnasiumCrafter(seed)


def async_baseline_rate(num_envs: int, seconds: float, numba: bool) -> float:
    """gymnasium's AsyncVectorEnv over crafter as installed; without numba, opensimplex runs in Python."""
    from gymnasium.vector import AsyncVectorEnv

    saved = os.environ.get("NUMBA_DISABLE_JIT")
    os.environ["NUMBA_DISABLE_JIT"] = "0" if numba else "1"  # read by the spawned workers at import
    try:
        envs = AsyncVectorEnv([_gym_crafter(i) for i in range(num_envs)], context="spawn")
    finally:
        os.environ.pop("NUMBA_DISABLE_JIT") if saved is None else os.environ.update(NUMBA_DISABLE_JIT=saved)
    try:
        envs.reset(seed=0)
        rng = np.random.default_rng(0)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            envs.step(rng.integers(0, 17, num_envs))
            steps += num_envs
        return steps / (time.perf_counter() - start)
    finally:
        envs.close()


def bench_crafter_env(quick: bool) -> dict:
    """Random-action episodes of the default length; single-env rates measured before and after."""
    cores = os.cpu_count() or 1
    seconds, steps = (10, 1500) if quick else (30, 4000)
    num_envs = 16
    single = [single_env_rate(crafter_as_installed, steps)]
    single_fast = [single_env_rate(make_crafter, steps)]
    ours = ours_rate(num_envs, seconds)
    async_numba = async_baseline_rate(num_envs, seconds, numba=True)
    async_installed = async_baseline_rate(num_envs, seconds, numba=False)
    single.append(single_env_rate(crafter_as_installed, steps))
    single_fast.append(single_env_rate(make_crafter, steps))
    single_rate, single_fast_rate = float(np.mean(single)), float(np.mean(single_fast))
    return {
        "num_envs": num_envs,
        "workers": min(num_envs, cores),
        "single_env_steps_per_s_without_resets": round(single_rate, 1),
        "single_env_fast_path_steps_per_s_without_resets": round(single_fast_rate, 1),
        "ours_steps_per_s": round(ours, 1),
        "gymnasium_async_numba_steps_per_s": round(async_numba, 1),
        "gymnasium_async_crafter_as_installed_steps_per_s": round(async_installed, 1),
        "ratio_vs_cores_x_single": round(ours / (cores * single_rate), 3),
        "ratio_vs_cores_x_single_fast_path": round(ours / (cores * single_fast_rate), 3),
        "ratio_vs_gymnasium_async_numba": round(ours / async_numba, 3),
        "ratio_vs_gymnasium_async_crafter_as_installed": round(ours / async_installed, 3),
        "goal": "ratio_vs_cores_x_single >= 0.9, ratio_vs_gymnasium_async_numba >= 2, "
        "ratio_vs_gymnasium_async_crafter_as_installed >= 7",
    }


# ------------------------------------------------------------------------------- cached features


class RecomputingPolicy(ActorCritic):
    @property
    def caches_features(self) -> bool:
        return False


def bench_update_cache(quick: bool) -> dict:
    """Frozen backbone: PPO epochs on cached features vs running the backbone in every epoch."""
    from train import Config

    backbone = "resnet18" if quick else "tf_efficientnetv2_s"
    T, N, shape = (16, 16, (12, 64, 64)) if quick else (32, 32, (12, 64, 64))
    cfg = Config(update_epochs=4, num_minibatches=4)
    torch.manual_seed(0)
    spec = PolicySpec(backbone, shape, 3, 17, 256, freeze_backbone=True)
    cached, recomputing = ActorCritic(spec), RecomputingPolicy(spec)
    recomputing.load_state_dict(cached.state_dict())
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 255, (T, N, *shape), dtype=torch.uint8, generator=g)
    rewards = torch.randn(T, N, generator=g)
    buffers = {}
    for name, policy in (("cached", cached), ("recompute", recomputing)):
        torch.manual_seed(1)
        feature_dim = policy.feature_dim if policy.caches_features else None
        buf = RolloutBuffer(T, N, shape, torch.device("cpu"), feature_dim)
        for t in range(T):
            with torch.inference_mode():
                act = policy.act(obs[t])
            buf.add(
                t,
                act.features if policy.caches_features else obs[t],
                act.action,
                act.logprob,
                act.value,
                rewards[t],
                torch.zeros(N),
                torch.zeros(N),
            )
        buf.compute_advantages(torch.zeros(N), 0.99, 0.95)
        buffers[name] = buf
    seconds = {}
    for name, policy in (("cached", cached), ("recompute", recomputing)):
        ppo = PPO(policy, cfg, seed=0)
        tic = time.perf_counter()
        ppo.update(buffers[name])
        seconds[name] = time.perf_counter() - tic
    max_diff = max(
        (a - b).abs().max().item()
        for a, b in zip(cached.state_dict().values(), recomputing.state_dict().values(), strict=True)
    )
    return {
        "backbone": backbone,
        "batch": T * N,
        "update_seconds_cached": round(seconds["cached"], 3),
        "update_seconds_recompute": round(seconds["recompute"], 3),
        "speedup": round(seconds["recompute"] / seconds["cached"], 2),
        "max_abs_weight_difference": max_diff,
    }


# -------------------------------------------------------------------------------------- training


TRAINING = {
    "crafter": [
        "--env",
        "crafter",
        "--backbone",
        "impala_cnn",
        "--num-envs",
        "16",
        "--num-steps",
        "64",
        "--history-length",
        "1",
    ],
    "procgen": ["--preset", "procgen-official", "--env", "procgen/starpilot", "--num-envs", "16", "--num-steps", "64"],
    "atari": ["--preset", "atari-cleanrl", "--env", "atari/Breakout"],
}


def bench_training(family: str, updates: int, tmp: Path) -> dict:
    """train.py's own loop, in this process, for a few updates; SPS counts collection and update."""
    import train

    args = [
        *TRAINING[family],
        "--no-pretrained",
        "--no-freeze-backbone",
        "--wandb-mode",
        "disabled",
        "--eval-interval",
        str(10**9),
        "--no-eval-video",
        "--logdir",
        str(tmp / f"{family}_1"),
    ]
    cfg = train.config_from_args(args)
    cfg.steps = updates * cfg.batch_size
    cfg.eval_episodes = 1
    trainer = train.Trainer(cfg)
    trainer.maybe_evaluate = lambda: None  # throughput only
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    split = {k: round(v, 2) for k, v in trainer.timing.items()}
    return {
        "settings": " ".join(TRAINING[family]),
        "batch": cfg.batch_size,
        "updates": updates,
        "steps_per_s": round(cfg.steps / seconds, 1),
        "seconds_split": split,
        "peak_rss": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (minutes, not tens of minutes)")
    parser.add_argument("--only", default="crafter_env,update_cache,training", help="comma-separated sections")
    args = parser.parse_args()
    import tempfile

    results: dict = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "quick": args.quick}
    sections = args.only.split(",")
    if "crafter_env" in sections:
        results["crafter_env"] = bench_crafter_env(args.quick)
    if "update_cache" in sections:
        results["update_cache"] = bench_update_cache(args.quick)
    if "training" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            results["training"] = {f: bench_training(f, 2 if args.quick else 5, Path(tmp)) for f in TRAINING}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
