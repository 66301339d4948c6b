"""Train a PPO agent on a pixel game: `python train.py --logdir logs/run_1`.

Collect a rollout from vectorized envs -> GAE -> clipped PPO epochs -> log; every --eval-interval
steps evaluate on separate envs and keep `best_model.pth` whenever the mean eval return improves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import platform
import random
import re
import shutil
import sys
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agent import PPO
from buffer import RewardScaler, RolloutBuffer
from checkpoint import atomic_write, save_checkpoint
from env import UsageError, VecEnv, make_vec_env, parse_env_id
from evaluate import EvalResult, crafter_score, make_eval_env, resolve_device, run_episodes
from policy import ActorCritic, PolicySpec


def arg(default, help: str, **kwargs):
    """A Config field with its command-line help."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class Config:
    # run
    env: str = arg("crafter", "crafter, procgen/<game> or atari/<Game> (or a gymnasium id like ALE/Pong-v5)")
    logdir: str = arg("", "run folder (default: the next free logs/run_<N>)")
    preset: str = arg(
        "",
        "published hyperparameters to start from (see README)",
        choices=("", "crafter-moon", "procgen-official", "atari-cleanrl"),
    )
    overwrite: bool = arg(False, "replace an existing run in --logdir")
    steps: int = arg(1_000_000, "total environment steps (agent steps summed over envs)")
    eval_interval: int = arg(100_000, "evaluate every this many steps (and at the end)")
    eval_episodes: int = arg(20, "episodes per evaluation")
    eval_envs: int = arg(8, "parallel evaluation envs")
    num_envs: int = arg(64, "parallel training envs")
    history_length: int = arg(4, "frames stacked into one observation")
    seed: int = arg(42, "random seed")
    device: str = arg("auto", "auto, cpu or cuda[:N]")
    save_interval: float = arg(10.0, "also save last.pth every this many minutes")
    # policy
    backbone: str = arg("tf_efficientnetv2_s.in21k_ft_in1k", "any timm model, or nature_cnn / impala_cnn")
    pretrained: bool = arg(True, "load the backbone's pretrained weights when they can be had")
    pretrained_file: str = arg("", "load backbone weights from this local file instead of the hub")
    freeze_backbone: bool = arg(True, "keep backbone weights fixed; train only the heads")
    head_hidden: int = arg(256, "width of the 3-layer policy and value heads")
    # PPO
    lr: float = arg(3e-4, "Adam learning rate")
    lr_schedule: str = arg("linear", "learning-rate schedule", choices=("constant", "linear", "cosine"))
    num_steps: int = arg(128, "rollout length per env per update")
    update_epochs: int = arg(4, "PPO epochs per rollout")
    num_minibatches: int = arg(8, "minibatches per epoch")
    gamma: float = arg(0.99, "discount factor")
    gae_lambda: float = arg(0.95, "GAE lambda")
    clip_coef: float = arg(0.2, "PPO ratio clip (also the value clip)")
    clip_vloss: bool = arg(True, "clip the value loss around the rollout values")
    ent_coef: float = arg(0.01, "entropy bonus coefficient")
    vf_coef: float = arg(0.5, "value loss coefficient")
    max_grad_norm: float = arg(0.5, "global gradient norm clip")
    target_kl: float | None = arg(None, "stop the epochs early when approx KL exceeds this (none: never)")
    norm_adv: bool = arg(True, "normalize advantages per minibatch")
    reward_scaling: str = arg(
        "auto",
        "training rewards: auto (Atari sign, Procgen normalize, Crafter none)",
        choices=("auto", "none", "sign", "normalize"),
    )
    # game options
    distribution_mode: str = arg(
        "easy", "Procgen distribution mode", choices=("easy", "hard", "extreme", "memory", "exploration")
    )
    start_level: int = arg(0, "Procgen: first training level")
    num_levels: int = arg(200, "Procgen: number of training levels (0: unlimited); eval uses unseen levels")
    episodic_life: bool = arg(True, "Atari: a lost life ends the training episode (never in evaluation)")
    sticky_actions: float = arg(0.0, "Atari: repeat-action probability (0.25 is the v5 protocol)")
    # logging
    wandb_mode: str = arg(
        "auto",
        "auto: online with a key or login, else offline in the logdir",
        choices=("auto", "online", "offline", "disabled"),
    )
    wandb_project: str = arg("pixelppo", "wandb project")
    wandb_entity: str = arg("", "wandb entity (team or user)")
    wandb_key: str = arg("", "wandb API key (never written to disk)")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.steps / self.batch_size))

    def public_dict(self) -> dict:
        """The resolved config without secrets, as written to the logdir, wandb and checkpoints."""
        return {k: v for k, v in asdict(self).items() if k != "wandb_key"}


PRESETS: dict[str, dict] = {
    # Moon et al. 2023, configs/ppo.yaml (tuned PPO, 15.6% Crafter score with an IMPALA ResNet)
    "crafter-moon": dict(
        env="crafter",
        num_envs=8,
        num_steps=512,
        update_epochs=3,
        num_minibatches=8,
        lr=3e-4,
        lr_schedule="constant",
        gamma=0.95,
        gae_lambda=0.65,
        clip_coef=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        history_length=1,
        backbone="impala_cnn_wide",
        pretrained=False,
        freeze_backbone=False,
        head_hidden=1024,
        reward_scaling="none",
    ),
    # openai/train-procgen: easy mode, 25M steps, 200 training levels
    "procgen-official": dict(
        env="procgen/starpilot",
        steps=25_000_000,
        num_envs=64,
        num_steps=256,
        update_epochs=3,
        num_minibatches=8,
        lr=5e-4,
        lr_schedule="constant",
        gamma=0.999,
        gae_lambda=0.95,
        ent_coef=0.01,
        clip_coef=0.2,
        clip_vloss=True,
        reward_scaling="normalize",
        history_length=1,
        backbone="impala_cnn",
        pretrained=False,
        freeze_backbone=False,
        distribution_mode="easy",
        num_levels=200,
        eval_interval=1_000_000,
    ),
    # CleanRL ppo_atari.py
    "atari-cleanrl": dict(
        env="atari/Breakout",
        steps=10_000_000,
        num_envs=8,
        num_steps=128,
        update_epochs=4,
        num_minibatches=4,
        lr=2.5e-4,
        lr_schedule="linear",
        gamma=0.99,
        gae_lambda=0.95,
        clip_coef=0.1,
        clip_vloss=True,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        history_length=4,
        backbone="nature_cnn",
        pretrained=False,
        freeze_backbone=False,
        reward_scaling="sign",
        episodic_life=True,
        eval_interval=500_000,
    ),
}


# ------------------------------------------------------------------------------------------ CLI


def optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


def build_parser() -> argparse.ArgumentParser:
    """One flag per Config field; defaults are suppressed so presets can sit between them and the flags."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS
    )
    types = {"int": int, "float": float, "str": str, "float | None": optional_float}
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(
                flag, type=types[f.type], choices=f.metadata.get("choices"), help=help_text, metavar=f.name.upper()
            )
    return parser


def config_from_args(argv: list[str] | None = None) -> Config:
    """Defaults, then the preset's values, then the flags given."""
    given = vars(build_parser().parse_args(argv))
    preset = PRESETS.get(given.get("preset", ""), {})
    cfg = Config(**(preset | given))
    if preset and parse_env_id(cfg.env).family != parse_env_id(preset["env"]).family:
        raise UsageError(f"preset {cfg.preset} is for {parse_env_id(preset['env']).family}, not {cfg.env}")
    return cfg


def validate(cfg: Config) -> None:
    """Reject impossible settings before anything starts."""
    parse_env_id(cfg.env)
    checks = [
        (cfg.steps >= 1, "--steps must be at least 1"),
        (cfg.num_envs >= 1 and cfg.num_steps >= 1, "--num-envs and --num-steps must be at least 1"),
        (cfg.history_length >= 1, "--history-length must be at least 1"),
        (
            cfg.eval_interval >= 1 and cfg.eval_episodes >= 1 and cfg.eval_envs >= 1,
            "--eval-interval, --eval-episodes and --eval-envs must be at least 1",
        ),
        (cfg.update_epochs >= 1, "--update-epochs must be at least 1"),
        (
            1 <= cfg.num_minibatches <= cfg.batch_size and cfg.batch_size % cfg.num_minibatches == 0,
            f"--num-minibatches {cfg.num_minibatches} must divide the batch of {cfg.num_envs} envs x "
            f"{cfg.num_steps} steps = {cfg.batch_size}",
        ),
        (cfg.lr > 0, "--lr must be positive"),
        (0 < cfg.gamma <= 1 and 0 <= cfg.gae_lambda <= 1, "--gamma must be in (0, 1] and --gae-lambda in [0, 1]"),
        (cfg.clip_coef > 0 and cfg.max_grad_norm > 0, "--clip-coef and --max-grad-norm must be positive"),
        (0 <= cfg.sticky_actions <= 1, "--sticky-actions must be a probability"),
        (cfg.save_interval > 0, "--save-interval must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    import timm

    if not timm.is_model(cfg.backbone):
        raise UsageError(f"unknown backbone {cfg.backbone!r}; see timm.list_models() or use nature_cnn / impala_cnn")
    if cfg.pretrained_file and not os.path.isfile(cfg.pretrained_file):
        raise UsageError(f"--pretrained-file not found: {cfg.pretrained_file}")
    resolve_device(cfg.device)


def prepare_logdir(cfg: Config) -> Path:
    """Pick or check the run folder: never silently overwrite an existing run."""
    if not cfg.logdir:
        n = 1
        while Path(f"logs/run_{n}").exists():
            n += 1
        cfg.logdir = f"logs/run_{n}"
    logdir = Path(cfg.logdir)
    if not re.search(r"\d$", logdir.name):
        warnings.warn(
            f"logdir {logdir} does not end in a number; numbered runs (logs/run_1) are easier to keep apart",
            stacklevel=2,
        )
    if logdir.exists() and any(logdir.iterdir()):
        if not cfg.overwrite:
            raise UsageError(f"{logdir} already holds a run; pass --overwrite to replace it or pick another --logdir")
        shutil.rmtree(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to logdir {logdir}: {e.strerror}") from e
    return logdir


# -------------------------------------------------------------------------------------- logging


class RunLogger:
    """Metrics to `metrics.jsonl` always, and to wandb unless disabled."""

    def __init__(self, cfg: Config, logdir: Path):
        self.metrics_file = open(logdir / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run, see close)
        self.wandb = init_wandb(cfg, logdir)

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.metrics_file.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def close(self) -> None:
        self.metrics_file.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_logged_in() -> bool:
    import netrc

    try:
        return bool(netrc.netrc().authenticators("api.wandb.ai"))
    except (OSError, netrc.NetrcParseError):
        return False


def init_wandb(cfg: Config, logdir: Path):
    """wandb run: online with a key or login, offline files in the logdir otherwise."""
    if cfg.wandb_mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    if cfg.wandb_key:
        os.environ["WANDB_API_KEY"] = cfg.wandb_key
    mode = cfg.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") or wandb_logged_in() else "offline"
    config = cfg.public_dict() | {"hardware": hardware_info()}
    kwargs = dict(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity or None,
        name=logdir.name,
        dir=str(logdir),
        config=config,
        group=cfg.env,
    )
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=90), **kwargs)
    except Exception as e:  # bad key, no network, service error: never stop training over logging
        if mode != "online":
            raise
        print(f"wandb: online init failed ({str(e).splitlines()[0][:120]}); logging offline", file=sys.stderr)
        run = wandb.init(mode="offline", **kwargs)
    print(f"wandb: {mode} run {'at ' + run.url if mode == 'online' else 'in ' + str(logdir / 'wandb')}")
    return run


def hardware_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class EpisodeLog:
    """Training episodes: recent returns for progress, and Crafter success counts over *all* training
    episodes (the published Crafter score)."""

    def __init__(self, window: int = 100):
        self.recent_returns: deque[float] = deque(maxlen=window)
        self.count = 0
        self.unlocked: dict[str, int] = {}

    def add(self, episodes) -> None:
        for ep in episodes:
            self.recent_returns.append(ep.ret)
            self.count += 1
            for name, times in (ep.achievements or {}).items():
                self.unlocked[name] = self.unlocked.get(name, 0) + (times > 0)

    def crafter_metrics(self) -> dict:
        if not self.unlocked:
            return {}
        rates = {name: 100.0 * n / self.count for name, n in sorted(self.unlocked.items())}
        return {"crafter/score": crafter_score(rates)} | {f"crafter/success_{k}": v for k, v in rates.items()}


class EvalHistory:
    """Every evaluation of the run, saved as `eval_stats.pkl` (dict of lists) and `eval_stats.json`."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.stats: dict[str, list] = {
            "step": [],
            "mean_return": [],
            "std_return": [],
            "mean_length": [],
            "returns": [],
            "lengths": [],
        }

    def add(self, step: int, result: EvalResult) -> dict:
        summary = result.summary()
        row = {
            "step": step,
            "mean_return": summary["mean_return"],
            "std_return": summary["std_return"],
            "mean_length": summary["mean_length"],
            "returns": result.returns,
            "lengths": result.lengths,
        }
        if "crafter_score" in summary:
            row |= {"crafter_score": summary["crafter_score"], "success_rates": summary["success_rates"]}
        for key, value in row.items():
            self.stats.setdefault(key, []).append(value)
        atomic_write(self.logdir / "eval_stats.pkl", lambda f: pickle.dump(self.stats, f))
        atomic_write(self.logdir / "eval_stats.json", lambda f: f.write(json.dumps(self.stats, indent=1).encode()))
        return summary


# ------------------------------------------------------------------------------------ training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(cfg: Config, progress: float) -> float:
    """LR at `progress` in [0, 1) of training."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - progress)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


def reward_mode(cfg: Config) -> str:
    if cfg.reward_scaling != "auto":
        return cfg.reward_scaling
    return {"atari": "sign", "procgen": "normalize"}.get(parse_env_id(cfg.env).family, "none")


def make_train_env(cfg: Config) -> VecEnv:
    return make_vec_env(
        cfg.env,
        cfg.num_envs,
        cfg.seed,
        cfg.history_length,
        distribution_mode=cfg.distribution_mode,
        start_level=cfg.start_level,
        num_levels=cfg.num_levels,
        episodic_life=cfg.episodic_life,
        repeat_action_probability=cfg.sticky_actions,
    )


def collect_rollout(
    envs: VecEnv,
    policy: ActorCritic,
    buffer: RolloutBuffer,
    obs: np.ndarray,
    scaler: RewardScaler,
    timing: dict[str, float],
) -> tuple[np.ndarray, list]:
    """Fill `buffer` with num_steps steps of every env, starting from `obs`; -> (next obs, episodes)."""
    policy.eval()
    episodes = []
    device = buffer.device
    for t in range(buffer.num_steps):
        tic = time.perf_counter()
        obs_t = torch.as_tensor(obs, device=device)  # (N, K*C, H, W) uint8
        with torch.inference_mode():
            act = policy.act(obs_t)
        actions = act.action.cpu().numpy()
        tac = time.perf_counter()
        result = envs.step(actions)
        toc = time.perf_counter()
        dones = result.terminated | result.truncated
        rewards = scaler(result.rewards, dones)
        bootstrap = torch.zeros(envs.num_envs, device=device)
        if result.truncated.any():  # time limit: the episode's value beyond it is V(final obs), not 0
            with torch.inference_mode():
                final = torch.as_tensor(result.final_obs[result.truncated], device=device)
                bootstrap[torch.as_tensor(result.truncated, device=device)] = policy.value(final)
        buffer.add(
            t,
            act.features if policy.caches_features else obs_t,
            act.action,
            act.logprob,
            act.value,
            torch.as_tensor(rewards, device=device),
            torch.as_tensor(dones, dtype=torch.float32, device=device),
            bootstrap,
        )
        obs = result.obs
        episodes.extend(result.episodes)
        timing["inference"] += tac - tic + time.perf_counter() - toc
        timing["env"] += toc - tac
    return obs, episodes


def make_buffer(cfg: Config, policy: ActorCritic, obs_shape: tuple[int, ...], device: torch.device) -> RolloutBuffer:
    feature_dim = policy.feature_dim if policy.caches_features else None
    return RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_shape, device, feature_dim)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(cfg: Config) -> dict:
    """Run one training; returns the final summary (also written to `summary.json`)."""
    validate(cfg)
    logdir = prepare_logdir(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    (logdir / "config.json").write_text(json.dumps(cfg.public_dict(), indent=2))
    print(
        f"pixelppo: {cfg.env} for {cfg.steps:,} steps on {device}, {cfg.num_envs} envs, backbone {cfg.backbone}"
        f" -> {logdir}"
    )

    envs = make_train_env(cfg)
    eval_envs = make_eval_env(cfg.public_dict(), min(cfg.eval_envs, cfg.eval_episodes), cfg.seed)
    spec = PolicySpec(
        cfg.backbone, envs.obs_shape, envs.frame_channels, envs.num_actions, cfg.head_hidden, cfg.freeze_backbone
    )
    policy = ActorCritic(spec, cfg.pretrained, cfg.pretrained_file).to(device)
    ppo = PPO(policy, cfg, seed=cfg.seed)
    buffer = make_buffer(cfg, policy, envs.obs_shape, device)
    scaler = RewardScaler(reward_mode(cfg), cfg.num_envs, cfg.gamma)
    logger = RunLogger(cfg, logdir)
    history = EvalHistory(logdir)
    episodes = EpisodeLog()

    global_step, best_return, last_eval = 0, -math.inf, None
    next_eval = cfg.eval_interval
    timing = {"env": 0.0, "inference": 0.0, "update": 0.0}
    start = last_print = last_save = time.time()

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path,
            {
                "config": cfg.public_dict(),
                "policy_spec": spec.to_dict(),
                "model": policy.state_dict(),
                "optimizer": ppo.optimizer.state_dict(),
                "global_step": global_step,
                "best_eval_return": best_return,
                "eval_return": last_eval,
            },
        )

    try:
        obs = envs.reset()
        for update in range(1, cfg.num_updates + 1):
            lr = learning_rate(cfg, (update - 1) / cfg.num_updates)
            ppo.set_lr(lr)
            obs, finished = collect_rollout(envs, policy, buffer, obs, scaler, timing)
            global_step += cfg.batch_size
            episodes.add(finished)

            tic = time.perf_counter()
            with torch.inference_mode():
                last_values = policy.value(torch.as_tensor(obs, device=device))
            buffer.compute_advantages(last_values, cfg.gamma, cfg.gae_lambda)
            stats = ppo.update(buffer)
            timing["update"] += time.perf_counter() - tic

            elapsed = time.time() - start
            metrics = (
                {f"losses/{k}": v for k, v in stats.items()}
                | {
                    "charts/learning_rate": lr,
                    "charts/episodes": episodes.count,
                    "perf/sps": global_step / elapsed,
                }
                | {f"perf/{k}_seconds": v for k, v in timing.items()}
                | episodes.crafter_metrics()
            )
            if finished:
                metrics |= {
                    "charts/episode_return": float(np.mean([e.ret for e in finished])),
                    "charts/episode_length": float(np.mean([e.length for e in finished])),
                }
            logger.log(global_step, metrics)

            if global_step >= next_eval or update == cfg.num_updates:
                result = run_episodes(policy, eval_envs, cfg.eval_episodes, device)
                summary = history.add(global_step, result)
                last_eval = summary["mean_return"]
                improved = last_eval > best_return
                if improved:
                    best_return = last_eval
                    checkpoint(logdir / "best_model.pth")
                eval_metrics = {
                    "eval/mean_return": last_eval,
                    "eval/std_return": summary["std_return"],
                    "eval/mean_length": summary["mean_length"],
                    "eval/best_return": best_return,
                }
                if "crafter_score" in summary:
                    eval_metrics["eval/crafter_score"] = summary["crafter_score"]
                logger.log(global_step, eval_metrics)
                print(
                    f"eval @ {global_step:,}: return {last_eval:.2f} +- {summary['std_return']:.2f} over "
                    f"{len(result.returns)} episodes{' (new best, saved best_model.pth)' if improved else ''}"
                )
                checkpoint(logdir / "last.pth")
                last_save = time.time()
                while next_eval <= global_step:
                    next_eval += cfg.eval_interval
            elif time.time() - last_save > cfg.save_interval * 60:
                checkpoint(logdir / "last.pth")
                last_save = time.time()

            if time.time() - last_print > 5 or update in (1, cfg.num_updates):
                last_print = time.time()
                recent = episodes.recent_returns
                ret = f"{np.mean(recent):.2f} ({len(recent)} eps)" if recent else "n/a"
                eta = elapsed / global_step * (cfg.num_updates * cfg.batch_size - global_step)
                print(
                    f"step {global_step:,}/{cfg.steps:,} ({100 * global_step / cfg.steps:.0f}%) | "
                    f"{global_step / elapsed:.0f} sps | return {ret} | best eval {best_return:.2f} | "
                    f"eta {format_duration(eta)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        checkpoint(logdir / "last.pth")
        print(f"interrupted at step {global_step:,}; saved {logdir / 'last.pth'}", file=sys.stderr)
        raise
    finally:
        envs.close()
        eval_envs.close()
        logger.close()

    summary = {
        "global_step": global_step,
        "best_eval_return": best_return,
        "last_eval_return": last_eval,
        "sps": global_step / (time.time() - start),
        "seconds": time.time() - start,
        "time_split_seconds": timing,
        "train_episodes": episodes.count,
    } | episodes.crafter_metrics()
    (logdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"done: {global_step:,} steps at {summary['sps']:.0f} sps; best eval return {best_return:.2f}; "
        f"checkpoints in {logdir}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        train(cfg)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
