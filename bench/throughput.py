"""Throughput benchmark: `python bench/throughput.py [--quick] [--only crafter_env,...] [--out FILE.json]`.

Prints one JSON object. Every goal is a ratio against a baseline measured in the same run, because
these machines are noisy:
- crafter_env: our Crafter vector env against N x the single-env stepping rate of crafter as installed
  without resets, against N x our own single-env rate (are resets hidden?), and against gymnasium's
  AsyncVectorEnv over crafter as installed, with numba world generation and without.
- update_cache: the PPO update with a frozen backbone on cached features against recomputing the
  backbone in every epoch, and whether the learned heads come out the same.
- recurrent_update: the PPO update of GRU and LSTM policies against the feed-forward one (same backbone and
  batch), with no episode start inside the rollout, starts every 32 steps, and starts at every step.
- update_chunks: the PPO update with the backbone on chunks of frames (ActorCritic.cpu_chunk) against whole
  minibatches, for each preset's network and minibatch size.
- precision: the PPO update of each preset's network in fp32 and in bf16 autocast, alternated: is bf16 faster on
  this CPU, and does `--precision auto` pick the faster?
- update_allocator: why the chunks pay: the whole minibatch and chunks of 128 frames, each in a fresh process with
  glibc's default allocator (which unmaps every freed block over 32 MB) and with mmap off; seconds and page faults.
- augment_update: the PPO update with DrAC (--augment crop, random_conv) against none (procgen-official's network).
- ranks: train.py on one process against two torchrun processes on the same global batch.
- default_run: `python train.py` (the crafter-cpu recipe) in fp32 and in bf16: steps/s and minutes per 1M-step run.
- training: train.py's loop in fp32 and in bf16 (`--precision`) side by side with baselines written in
  bench/baselines.py (CleanRL's ppo_atari.py; a plain PyTorch loop over ProcgenGym3Env), and crafter-moon in
  fp32 and bf16, alternating runs in fresh processes; steps/s, time split (env / inference / update) and peak
  RSS of each process tree; the peak RSS of the effnetv2s-frozen preset (64 envs, frozen EfficientNetV2-S).
- gpu (skipped without CUDA): Atari and crafter-moon training on the GPU in fp32 with and without the CUDA-graph
  rollout step and in bf16, beside CleanRL's ppo_atari.py on the same GPU; the default Crafter run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import PPO  # noqa: E402
from buffer import RolloutBuffer  # noqa: E402
from env_crafter import CrafterVecEnv, make_crafter  # noqa: E402
from policy import ActorCritic, PolicySpec  # noqa: E402
from runlog import hardware_info  # noqa: E402

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
    from config import Config

    backbone = "resnet18" if quick else "tf_efficientnetv2_s"
    T, N, shape = (16, 16, (12, 64, 64)) if quick else (32, 32, (12, 64, 64))
    cfg = Config(update_epochs=4, num_minibatches=4)
    torch.manual_seed(0)
    spec = PolicySpec(backbone, shape, 3, 17, head_hidden=256, freeze_backbone=True)
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
                act = policy.act(obs[t])  # feed-forward: no recurrent state
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


def update_seconds(
    spec: PolicySpec, cfg, T: int, start_every: int, repeats: int, precision: str = "fp32", cpu_chunk: int | None = None
) -> float:
    """Best-of-`repeats` seconds of one PPO update with `cfg`'s settings on a random rollout of T steps x
    cfg.num_envs whose episodes start every `start_every` steps in all envs (0: never inside the rollout), with the
    backbone in `precision` on chunks of `cpu_chunk` frames (None: the policy's default)."""
    torch.manual_seed(0)
    policy = ActorCritic(spec)
    policy.precision = precision
    if cpu_chunk is not None:
        policy.cpu_chunk = cpu_chunk
    N, A = cfg.num_envs, spec.num_actions
    state_size = policy.core.state_size if policy.core is not None else 0
    buf = RolloutBuffer(T, N, spec.obs_shape, torch.device("cpu"), None, None, state_size)
    g = torch.Generator().manual_seed(0)
    buf.inputs = torch.randint(0, 255, (T, N, *spec.obs_shape), dtype=torch.uint8, generator=g)
    buf.actions = torch.randint(0, A, (T, N), generator=g)
    buf.advantages, buf.returns = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    if start_every:
        buf.starts[::start_every] = True
    log_probs = torch.log_softmax(torch.randn(T, N, A, generator=g), -1)
    buf.logprobs = log_probs.gather(2, buf.actions[..., None])[..., 0]
    best = float("inf")
    for _ in range(repeats):
        ppo = PPO(policy, cfg, seed=0)
        tic = time.perf_counter()
        ppo.update(buf)
        best = min(best, time.perf_counter() - tic)
    return best


def bench_recurrent_update(quick: bool) -> dict:
    """Update time of GRU / LSTM policies against the feed-forward one, same backbone and batch (8 envs x 128
    steps, Nature CNN, CleanRL's Atari sizes): with no episode start inside the rollout (one recurrent call per
    sequence), with starts every 32 steps (4 calls) and at every step (the per-step loop, the worst case)."""
    from config import Config

    T, shape, repeats = (32, (4, 84, 84), 1) if quick else (128, (4, 84, 84), 2)

    def seconds(recurrent: str, start_every: int) -> float:
        spec = PolicySpec(
            "nature_cnn", shape, 1, 6, head_hidden=0, freeze_backbone=False, feature_norm=False, recurrent=recurrent
        )
        cfg = Config(num_envs=8, update_epochs=4, num_minibatches=4, recurrent=recurrent)
        return update_seconds(spec, cfg, T, start_every, repeats)

    feed_forward = seconds("none", 0)
    out = {"batch": T * 8, "feed_forward_seconds": round(feed_forward, 3)}
    for kind in ("gru", "lstm"):
        for label, every in (("no_starts", 0), ("starts_every_32", 32), ("starts_every_step", 1)):
            took = seconds(kind, every)
            out[f"{kind}_{label}_seconds"] = round(took, 3)
            out[f"{kind}_{label}_ratio"] = round(took / feed_forward, 2)
    return out


def bench_augment_update(quick: bool) -> dict:
    """Update time with DrAC (--augment crop, random_conv) against none: procgen-official's network and update settings
    (IMPALA CNN [16, 32, 32], 3 epochs x 8 minibatches) on 16 envs x 256 steps of 64x64 RGB."""
    from config import Config

    repeats = 1 if quick else 2
    T = 64 if quick else 256
    spec = PolicySpec("impala_cnn", (3, 64, 64), 3, 15, head_hidden=0, freeze_backbone=False, feature_norm=False)
    out = {"batch": T * 16}
    for kind in ("none", "crop", "random_conv"):
        cfg = Config(num_envs=16, update_epochs=3, num_minibatches=8, augment=kind)
        out[f"{kind}_seconds"] = round(update_seconds(spec, cfg, T, 0, repeats), 3)
    for kind in ("crop", "random_conv"):
        out[f"{kind}_ratio"] = round(out[f"{kind}_seconds"] / out["none_seconds"], 2)
    return out


UPDATE_CHUNK_CASES = {  # preset: backbone, frame shape, actions, its minibatch size
    "procgen_official": ("impala_cnn", (3, 64, 64), 15, 2048),
    "crafter_moon": ("impala_cnn_moon", (3, 64, 64), 17, 512),
    "crafter_cpu": ("nature_cnn", (3, 64, 64), 17, 512),
    "atari_cleanrl": ("nature_cnn", (4, 84, 84), 4, 256),
}


def bench_update_chunks(quick: bool) -> dict:
    """The PPO update with the backbone on chunks of 64, 128 or 256 frames (ActorCritic.cpu_chunk) against the
    whole minibatch at once, for each preset's network and minibatch size (3 epochs of 2 minibatches; the
    precision `--precision auto` picks here), alternated: ratio > 1 means the chunked update is faster."""
    from config import Config
    from hardware import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    chunks, minibatches, repeats = ((0, 128), 1, 1) if quick else ((0, 64, 128, 256), 2, 2)
    out: dict = {"precision": precision}
    for name, (backbone, shape, actions, minibatch) in UPDATE_CHUNK_CASES.items():
        spec = PolicySpec(backbone, shape, 1, actions, head_hidden=0, freeze_backbone=False)
        cfg = Config(num_envs=8, update_epochs=3, num_minibatches=minibatches)
        T = minibatches * minibatch // cfg.num_envs
        seconds = {c: update_seconds(spec, cfg, T, 0, repeats, precision, c) for c in chunks}
        case = {"minibatch": minibatch, "whole_seconds": round(seconds[0], 3)}
        for c in chunks[1:]:
            case[f"chunk_{c}_seconds"] = round(seconds[c], 3)
            case[f"chunk_{c}_speedup"] = round(seconds[0] / seconds[c], 2)
        out[name] = case
    return out


def bench_precision(quick: bool) -> dict:
    """Which precision `--precision auto` should pick on this CPU: the PPO update of each preset's network in fp32
    and in bf16 autocast, alternated after a warm-up (3 epochs of 1 or 2 minibatches, the default chunks); ratio
    > 1 means bf16 is faster. `auto_picks_the_faster` checks `hardware.bf16_pays_on_cpu`'s rule against them."""
    from config import Config
    from hardware import bf16_pays_on_cpu, cpu_vendor, resolve_precision

    minibatches, repeats = (1, 2) if quick else (2, 3)
    auto = resolve_precision("auto", torch.device("cpu"))
    out: dict = {
        "cpu_vendor": cpu_vendor(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "auto_precision_here": auto,
        "auto_reason": bf16_pays_on_cpu()[1],
    }
    ratios = []
    for name, (backbone, shape, actions, minibatch) in UPDATE_CHUNK_CASES.items():
        spec = PolicySpec(backbone, shape, 1, actions, head_hidden=0, freeze_backbone=False)
        cfg = Config(num_envs=8, update_epochs=3, num_minibatches=minibatches)
        T = minibatches * minibatch // cfg.num_envs
        seconds = {"fp32": float("inf"), "bf16": float("inf")}
        for precision in seconds:  # warm-up: oneDNN creates its kernels for each precision's shapes once
            update_seconds(spec, cfg, T, 0, 1, precision)
        for _ in range(repeats):  # alternated: these machines' speed drifts
            for precision in seconds:
                seconds[precision] = min(seconds[precision], update_seconds(spec, cfg, T, 0, 1, precision))
        ratios.append(seconds["fp32"] / seconds["bf16"])
        out[name] = {f"{k}_seconds": round(v, 3) for k, v in seconds.items()} | {"bf16_over_fp32": round(ratios[-1], 2)}
    out["auto_picks_the_faster"] = all((r > 1) == (auto == "bf16") for r in ratios)
    return out


def update_chunk_child(case: str, cpu_chunk: int) -> dict:
    """One UPDATE_CHUNK_CASES update in this (fresh) process: seconds and the minor page faults it took."""
    import resource

    from config import Config
    from hardware import resolve_precision

    backbone, shape, actions, minibatch = UPDATE_CHUNK_CASES[case]
    spec = PolicySpec(backbone, shape, 1, actions, head_hidden=0, freeze_backbone=False)
    cfg = Config(num_envs=8, update_epochs=3, num_minibatches=2)
    precision = resolve_precision("auto", torch.device("cpu"))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = update_seconds(spec, cfg, 2 * minibatch // cfg.num_envs, 0, 2, precision, cpu_chunk)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"seconds": seconds, "minor_page_faults": faults}


MMAP_OFF = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**34)}  # glibc: freed memory stays mapped


def bench_update_allocator(quick: bool) -> dict:
    """Why the chunks pay: glibc returns every freed block over 32 MB to the OS, so a whole minibatch's
    activations are mapped and page-faulted in anew at every minibatch. The update_chunks cases with the whole
    minibatch and with chunks of 128 frames, each in a fresh process with glibc's default allocator and with
    mmap off (freed memory kept for reuse), alternated; seconds (best of 2 updates) and minor page faults."""
    import subprocess

    cases = ["crafter_moon"] if quick else ["procgen_official", "crafter_moon"]
    out: dict = {}
    for case in cases:
        runs: dict = {}
        for _ in range(1 if quick else 2):
            for allocator, env in (("default", {}), ("mmap_off", MMAP_OFF)):
                for chunk in (0, 128):
                    command = [sys.executable, str(BENCH / "throughput.py"), "--child-update", case, str(chunk)]
                    text = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, check=True)
                    runs.setdefault(f"{allocator}_chunk_{chunk}", []).append(json.loads(text.stdout.splitlines()[-1]))
        out[case] = {
            name: {
                "seconds": round(min(r["seconds"] for r in rs), 3),
                "minor_page_faults": min(r["minor_page_faults"] for r in rs),
            }
            for name, rs in runs.items()
        }
    return out


def ranks_steps_per_s(processes: int, global_envs: int, updates: int) -> dict:
    """train.py on `processes` processes (torchrun with gloo on the CPU when more than one) with the same global
    batch, evaluation off; steps/s over the whole run from its summary.json."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "run_1"
        num_steps = 128
        args = [*TRAINING["procgen"], "--num-envs", str(global_envs // processes), "--num-steps", str(num_steps),
                "--steps", str(updates * global_envs * num_steps), "--eval-interval", str(10**12),
                "--no-eval-video", "--wandb-mode", "disabled", "--device", "cpu", "--logdir", str(logdir)]  # fmt: skip
        train = str(BENCH.parent / "train.py")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*launcher, train, *args] if processes > 1 else [sys.executable, train, *args]
        threads = str(max(1, (os.cpu_count() or 1) // processes))
        import subprocess

        subprocess.run(command, check=True, capture_output=True, env=os.environ | {"OMP_NUM_THREADS": threads})
        summary = json.loads((logdir / "summary.json").read_text())
    return {"steps_per_s": round(summary["sps"], 1), "steps": summary["global_step"]}


def bench_ranks(quick: bool) -> dict:
    """One process (all cores) against two torchrun processes (gloo, half the cores each) on the same global
    batch (procgen-official's network on starpilot, 32 envs x 128 steps per update): speedup = SPS(2) / SPS(1).
    Both use the whole machine, so this measures what the communication costs, not more hardware."""
    updates = 1 if quick else 3
    one = ranks_steps_per_s(1, 32, updates)
    two = ranks_steps_per_s(2, 32, updates)
    return {"one_process": one, "two_processes": two, "speedup": round(two["steps_per_s"] / one["steps_per_s"], 2)}


# -------------------------------------------------------------------------------------- training

BENCH = Path(__file__).resolve().parent

# our runs: preset (or defaults) + flags; the baselines get the same sizes
TRAINING = {
    "atari": ["--preset", "atari-cleanrl", "--env", "atari/Breakout"],
    "procgen": ["--preset", "procgen-official", "--env", "procgen/starpilot"],
    "crafter_moon": ["--preset", "crafter-moon"],
    "crafter_default": [],  # python train.py with no flags (the crafter-cpu recipe)
    "effnetv2s_frozen": ["--preset", "effnetv2s-frozen"],  # frozen EfficientNetV2-S, 64 envs x 4 frames
}


def train_steps_per_s(family: str, updates: int, extra: list[str]) -> dict:
    """train.py's own loop for a few updates (evaluation off); SPS counts collection and update."""
    import tempfile

    import train
    from config import config_from_args

    with tempfile.TemporaryDirectory() as tmp:
        args = [*TRAINING[family], *extra, "--wandb-mode", "disabled", "--eval-interval", str(10**12)]
        cfg = config_from_args([*args, "--no-eval-video", "--logdir", str(Path(tmp) / "run_1")])
        cfg.steps = updates * cfg.batch_size
        trainer = train.Trainer(cfg)
        trainer.evaluation_due = lambda: False  # throughput only
        ends = [time.perf_counter()]
        one_update = trainer.train_one_update
        trainer.train_one_update = lambda: (one_update(), ends.append(time.perf_counter()))[0]
        trainer.run()
        seconds = time.perf_counter() - ends[0]
    durations = np.diff(ends)
    later = durations[2:] if len(durations) > 2 else durations  # after warm-up (CUDA graph capture, compiling)
    return {
        "steps_per_s": cfg.steps / seconds,
        "steps_per_s_after_two_updates": cfg.batch_size / float(np.mean(later)),
        "steps": cfg.steps,
        "seconds": seconds,
        "seconds_split": dict(trainer.state.timing),
        "update_seconds": [round(float(d), 3) for d in durations],
    }


def tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants (Linux /proc)."""
    parents, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid], rss[pid] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(rss.get(pid, 0) for pid in tree)


def isolated(command: list[str]) -> dict:
    """Run a measurement in a fresh process; -> its JSON (last stdout line) + the peak RSS of its whole
    process tree (env workers included), sampled every 0.2 s."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *command], stdout=out, stderr=err, cwd=BENCH.parent)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().strip().splitlines(), err.read().strip()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {proc.returncode}:\n{errors[-3000:]}")
    result = json.loads(lines[-1])
    rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
    rounded["seconds_split"] = {k: round(v, 2) for k, v in result["seconds_split"].items()}
    return rounded | {"peak_rss_mb": round(peak / 2**20)}


def ours(family: str, updates: int, extra: list[str] | None = None) -> dict:
    extra = extra or []
    command = [str(BENCH / "throughput.py"), "--child", family, "--updates", str(updates), "--extra", *extra]
    return isolated(command) | {"settings": " ".join(TRAINING[family] + extra) or "(defaults)"}


def alternate(variants: dict[str, list[str]], baseline: list[str] | None, family: str, updates: int, rounds: int):
    """Runs in fresh processes, alternated `rounds` times (these machines' speed drifts): train.py with each
    variant's extra flags and, when given, the baseline (a bench/baselines.py argument list); -> each name's runs."""
    runs: dict[str, list] = {name: [] for name in ([] if baseline is None else ["baseline"]) + list(variants)}
    for _ in range(rounds):
        if baseline is not None:
            runs["baseline"].append(isolated([str(BENCH / "baselines.py"), *baseline, "--updates", str(updates)]))
        for name, extra in variants.items():
            runs[name].append(ours(family, updates, extra))
    return runs


def side_by_side(variants: dict[str, list[str]], baseline: list[str] | None, family: str, updates: int, rounds: int):
    """Steps/s of each variant and the baseline from alternated runs; each variant's ratio to the first variant
    and to the baseline."""
    runs = alternate(variants, baseline, family, updates, rounds)
    rate = {k: sum(r["steps"] for r in v) / sum(r["seconds"] for r in v) for k, v in runs.items()}
    result = {f"{k}_steps_per_s": round(v, 1) for k, v in rate.items()}
    first, *others = variants
    result |= {f"{k}_over_{first}": round(rate[k] / rate[first], 3) for k in others}
    if baseline:
        result |= {f"{k}_over_baseline": round(rate[k] / rate["baseline"], 3) for k in variants}
    return result | {"runs": runs}


def precisions_side_by_side(baseline: list[str] | None, family: str, updates: int, rounds: int, extra: list[str]):
    """train.py in fp32 and in bf16 (and the baseline, when there is one) alternated; steps/s and the ratios."""
    variants = {name: [*extra, "--precision", name] for name in ("fp32", "bf16")}
    return side_by_side(variants, baseline, family, updates, rounds)


def bench_training(quick: bool) -> dict:
    """Each preset in fp32 and in bf16 beside its baseline; `auto` is bf16 where it trains faster."""
    from hardware import resolve_precision

    rounds = 1 if quick else 2
    atari = precisions_side_by_side(["atari"], "atari", 2 if quick else 3, rounds, [])
    atari["goal"] = "bf16 >= 1.8x CleanRL ppo_atari.py on a CPU with native bf16 (same settings and network)"
    envs, steps = ("16", "64") if quick else ("64", "256")  # the official 64 x 256 unless quick
    sizes = ["--num-envs", envs, "--num-steps", steps]
    procgen = precisions_side_by_side(["procgen", *sizes], "procgen", 1, 1, sizes)  # one update is minutes already
    procgen["goal"] = "bf16 >= 1.8x the plain PyTorch loop over ProcgenGym3Env on a CPU with native bf16"
    moon_sizes = ["--num-envs", "8", "--num-steps", "64" if quick else "512"]
    crafter_moon = precisions_side_by_side(None, "crafter_moon", 1, 1, moon_sizes)
    crafter_moon["goal"] = "bf16 >= 2x fp32 on a CPU with native bf16"
    frozen = ours("effnetv2s_frozen", 1)
    baseline_rss = procgen["runs"]["baseline"][0]["peak_rss_mb"]
    return {
        "auto_precision_here": resolve_precision("auto", torch.device("cpu")),
        "atari": atari,
        "procgen": procgen,
        "crafter_moon": crafter_moon,
        "effnetv2s_frozen": frozen
        | {
            "rss_ratio_vs_plain_procgen_loop": round(frozen["peak_rss_mb"] / baseline_rss, 3),
            "goal": "peak RSS < 1/3 of CleanRL ppo_procgen's ~4.7 GB (float32 obs buffer), i.e. < 1570 MB",
        },
    }


def bench_default_run(quick: bool) -> dict:
    """The default run (`python train.py`: the crafter-cpu recipe) in fp32 and in bf16, alternated; steps/s and
    the minutes a whole 1,024,000-step run takes at that rate (evaluation off)."""
    from config import Config
    from hardware import resolve_precision

    result = precisions_side_by_side(None, "crafter_default", 2 if quick else 4, 1 if quick else 2, [])
    for name in ("fp32", "bf16"):
        result[f"{name}_minutes_per_run"] = round(Config.steps / result[f"{name}_steps_per_s"] / 60, 1)
    return {"auto_precision_here": resolve_precision("auto", torch.device("cpu"))} | result


def bench_gpu(quick: bool) -> dict:
    """Training on the GPU (`--device cuda`): Atari and crafter-moon in fp32 (TF32) with the rollout's policy step
    as a CUDA graph (the default), eagerly (`--no-cuda-graph`) and in bf16, beside CleanRL's ppo_atari.py on the
    same GPU; the default Crafter run. Skipped without CUDA. Before CUDA graphs (one H200, torch 2.11):
    crafter-moon ~1,100 steps/s, atari-cleanrl 2.12x CleanRL."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    cuda = ["--device", "cuda"]
    variants = {
        "fp32_graph": [*cuda, "--precision", "fp32"],
        "fp32_eager": [*cuda, "--precision", "fp32", "--no-cuda-graph"],
        "bf16_graph": [*cuda, "--precision", "bf16"],
    }
    crafter_moon = side_by_side(variants, None, "crafter_moon", 2 if quick else 4, 1)
    crafter_moon["goal"] = "fp32 >= 2,000 steps/s on one H200 (a 1M-step seed in under 10 minutes)"
    print(json.dumps({"crafter_moon": crafter_moon}), file=sys.stderr, flush=True)  # partial results: GPU time is short
    atari = side_by_side(variants, ["atari"], "atari", 4 if quick else 16, 1)
    atari["goal"] = "fp32 >= 3x CleanRL ppo_atari.py on the same GPU (moonshot: LeanRL's 6.8k steps/s on an H100)"
    print(json.dumps({"atari": atari}), file=sys.stderr, flush=True)
    default = side_by_side({"auto_graph": cuda}, None, "crafter_default", 2 if quick else 3, 1)
    return {"gpu": torch.cuda.get_device_name(0), "atari": atari, "crafter_moon": crafter_moon, "default_run": default}


SECTIONS = {  # --only's names, in the order they run
    "crafter_env": bench_crafter_env,
    "update_cache": bench_update_cache,
    "ranks": bench_ranks,
    "recurrent_update": bench_recurrent_update,
    "update_chunks": bench_update_chunks,
    "precision": bench_precision,
    "update_allocator": bench_update_allocator,
    "augment_update": bench_augment_update,
    "default_run": bench_default_run,
    "training": bench_training,
    "gpu": bench_gpu,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (minutes, not tens of minutes)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections",
    )
    parser.add_argument("--out", default="", help="also write the JSON to this file (e.g. bench/results/...)")
    parser.add_argument("--child", choices=list(TRAINING), help=argparse.SUPPRESS)  # one isolated training run
    parser.add_argument("--child-update", nargs=2, help=argparse.SUPPRESS)  # one isolated update: CASE CHUNK
    parser.add_argument("--updates", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_steps_per_s(args.child, args.updates, args.extra)))
        return
    if args.child_update:
        print(json.dumps(update_chunk_child(args.child_update[0], int(args.child_update[1]))))
        return
    results: dict = {"hardware": hardware_info(), "torch_threads": torch.get_num_threads(), "quick": args.quick}
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    for name, bench in SECTIONS.items():  # in this order whatever the order of --only
        if name in args.only.split(","):
            results[name] = bench(args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
