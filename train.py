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
import signal
import socket
import subprocess
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
from checkpoint import CheckpointError, atomic_write, load_checkpoint, resolve_checkpoint_path, save_checkpoint
from env import EnvCrashError, UsageError, VecEnv, make_vec_env, parse_env_id
from evaluate import EvalResult, make_eval_env, resolve_device, run_episodes
from policy import ActorCritic, PolicySpec
from scores import crafter_score
from visuals import plot_learning_curve, write_video


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
    resume: str = arg("", "continue the run in this logdir (its last.pth) or from this checkpoint")
    stop_after: int = arg(0, "stop cleanly once this many steps are done, to go on later with --resume (0: never)")
    max_env_crashes: int = arg(3, "restart crashed env workers up to this many times, then stop the run")
    max_bad_updates: int = arg(3, "stop after this many consecutive updates whose every minibatch was non-finite")
    # policy
    backbone: str = arg("tf_efficientnetv2_s.in21k_ft_in1k", "any timm model, or nature_cnn / impala_cnn")
    pretrained: bool = arg(True, "load the backbone's pretrained weights when they can be had")
    pretrained_file: str = arg("", "load backbone weights from this local file instead of the hub")
    freeze_backbone: bool = arg(True, "keep backbone weights fixed; train only the heads")
    head_hidden: int = arg(256, "width of the 3-layer policy and value heads (0: one linear layer each)")
    amp: bool = arg(False, "bf16 autocast in the forward passes (GPUs with bf16: Ampere or newer)")
    compile: bool = arg(False, "torch.compile the backbone (compiles for a minute or more; for long GPU runs)")
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
    eval_video: bool = arg(True, "record one evaluation episode as a video (logdir/videos and wandb)")
    video_every: int = arg(1, "record the video at every this many-th evaluation")
    video_frames: int = arg(500, "longest evaluation video in frames")
    progress_interval: float = arg(30.0, "seconds between progress lines when not on a terminal")
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
        head_hidden=0,  # the paper's network: IMPALA CNN to 256 units, then one linear layer per head
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
        head_hidden=0,  # CleanRL's network: Nature CNN, then one linear layer per head
        reward_scaling="sign",
        episodic_life=True,
        eval_interval=500_000,
    ),
}


# ------------------------------------------------------------------------------------------ CLI

# Flags that may differ from the checkpoint's config when resuming; everything else is the run's own.
RESUME_OVERRIDES = {
    "resume", "steps", "stop_after", "device", "save_interval", "max_env_crashes", "max_bad_updates",
    "wandb_mode", "wandb_project", "wandb_entity", "wandb_key", "overwrite", "eval_video", "video_every",
    "video_frames", "progress_interval", "amp", "compile",
}  # fmt: skip


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
    """Defaults, then the preset's values, then the flags given; with --resume, the run's own config."""
    given = vars(build_parser().parse_args(argv))
    if "resume" in given:
        return resumed_config(given)
    preset = PRESETS.get(given.get("preset", ""), {})
    cfg = Config(**(preset | given))
    if preset and parse_env_id(cfg.env).family != parse_env_id(preset["env"]).family:
        raise UsageError(f"preset {cfg.preset} is for {parse_env_id(preset['env']).family}, not {cfg.env}")
    return cfg


def resumed_config(given: dict) -> Config:
    """The checkpoint's config, with only the flags in RESUME_OVERRIDES allowed to change."""
    path = resolve_checkpoint_path(given["resume"], prefer="last.pth")
    saved = load_checkpoint(path)["config"]
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDES and saved.get(k) != v)
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(f"{flags} cannot change when resuming (the run keeps its own settings)")
    known = {f.name for f in dataclasses.fields(Config)}
    run_controls = {"stop_after": 0, "overwrite": False}  # what one invocation does, not part of the run
    cfg = Config(**({k: v for k, v in saved.items() if k in known} | run_controls | given))
    cfg.resume, cfg.logdir = str(path), str(path.parent)
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
        (cfg.stop_after >= 0 and cfg.max_env_crashes >= 0, "--stop-after and --max-env-crashes must be >= 0"),
        (cfg.max_bad_updates >= 1, "--max-bad-updates must be at least 1"),
        (cfg.video_every >= 1 and cfg.video_frames >= 1, "--video-every and --video-frames must be at least 1"),
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
    """Pick or check the run folder: never silently overwrite an existing run; fail fast when it can't
    be written."""
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
    if not cfg.resume and logdir.exists() and any(logdir.iterdir()):
        if not cfg.overwrite:
            raise UsageError(f"{logdir} already holds a run; pass --overwrite to replace it or --resume to continue")
        shutil.rmtree(logdir)
    for stale in logdir.glob(".*.tmp-*"):  # half-written files of a killed process; the real ones are intact
        stale.unlink()
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / ".write-test"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to logdir {logdir}: {e.strerror}") from e
    free_mb = shutil.disk_usage(logdir).free / 2**20
    if free_mb < MIN_FREE_MB:
        raise UsageError(f"only {free_mb:.0f} MB free in {logdir}; checkpoints need at least {MIN_FREE_MB} MB")
    return logdir


MIN_FREE_MB = 200


# -------------------------------------------------------------------------------------- logging


class RunLogger:
    """Metrics to `metrics.jsonl` always, and to wandb unless disabled. wandb trouble never stops a run:
    a failing wandb is dropped with one warning and the local file goes on."""

    def __init__(self, cfg: Config, logdir: Path, wandb_id: str | None = None):
        self.path = logdir / "metrics.jsonl"
        self.metrics_file = open(self.path, "a")  # noqa: SIM115 (open for the run, see close)
        self.wandb = init_wandb(cfg, logdir, wandb_id)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        local = {k: v for k, v in clean.items() if isinstance(v, int | float | str | None)}
        if local:
            self.metrics_file.write(json.dumps({"step": step, "time": round(time.time(), 3), **local}) + "\n")
            self.metrics_file.flush()
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)
            except Exception as e:  # a logging service must never end training
                warnings.warn(f"wandb logging failed ({e}); continuing with local metrics only", stacklevel=2)
                self.wandb = None

    def log_video(self, step: int, path: Path) -> None:
        """Upload a video file to wandb (the file itself stays in the logdir)."""
        if self.wandb is not None:
            import wandb

            self.log(step, {"eval/video": wandb.Video(str(path), format=path.suffix[1:])})

    def close(self) -> None:
        self.metrics_file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # the local metrics are complete; wandb's own files may not be
                warnings.warn(f"wandb could not finish the run ({e})", stacklevel=2)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after `step` (work after the checkpoint that a resumed run redoes)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, lambda f: f.write("".join(kept).encode()))


def wandb_logged_in() -> bool:
    import netrc

    try:
        return bool(netrc.netrc().authenticators("api.wandb.ai"))
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_unreachable(timeout: float = 3.0) -> str:
    """'' when the wandb server accepts connections, else why not (seconds, not wandb's minutes of retries)."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return ""
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e}"


def init_wandb(cfg: Config, logdir: Path, run_id: str | None = None):
    """wandb run: online with a key or login, offline files in the logdir otherwise; `run_id` resumes a
    run. An online start that fails (no network, bad key, service error) falls back to offline."""
    if cfg.wandb_mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    if cfg.wandb_key:
        os.environ["WANDB_API_KEY"] = cfg.wandb_key
    mode = cfg.wandb_mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") or wandb_logged_in() else "offline"
    if mode == "online" and (unreachable := wandb_unreachable()):
        warnings.warn(f"wandb server unreachable ({unreachable}); logging offline", stacklevel=2)
        mode = "offline"
    kwargs = dict(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity or None,
        name=logdir.name,
        dir=str(logdir),
        config=cfg.public_dict() | {"hardware": hardware_info(), "git": git_info()},
        group=cfg.env,
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        run = wandb.init(mode=mode, **kwargs)
    except Exception as e:  # bad key, no network, service error: never stop training over logging
        if mode != "online":
            warnings.warn(f"wandb could not start ({str(e).splitlines()[0][:160]}); local metrics only", stacklevel=2)
            return None
        warnings.warn(f"wandb online start failed ({str(e).splitlines()[0][:160]}); logging offline", stacklevel=2)
        return init_wandb(dataclasses.replace(cfg, wandb_mode="offline"), logdir, run_id)
    print(f"wandb: {mode} run {'at ' + run.url if mode == 'online' else 'in ' + str(logdir / 'wandb')}")
    return run


def git_info() -> dict:
    """Commit of the code that ran, and whether it had uncommitted changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


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

    def state_dict(self) -> dict:
        return {"recent_returns": list(self.recent_returns), "count": self.count, "unlocked": dict(self.unlocked)}

    def load_state_dict(self, state: dict) -> None:
        self.recent_returns.extend(state["recent_returns"])
        self.count, self.unlocked = state["count"], dict(state["unlocked"])


class EvalHistory:
    """Every evaluation of the run, saved as `eval_stats.pkl` (dict of lists) and `eval_stats.json`."""

    KEYS = ("step", "mean_return", "std_return", "mean_length", "returns", "lengths")

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.stats: dict[str, list] = {k: [] for k in self.KEYS}

    def load(self, up_to_step: int) -> None:
        """Continue a resumed run's history, without evaluations made after its checkpoint."""
        path = self.logdir / "eval_stats.json"
        if path.exists():
            stats = json.loads(path.read_text())
            keep = [i for i, step in enumerate(stats["step"]) if step <= up_to_step]
            self.stats = {k: [v[i] for i in keep] for k, v in stats.items()}

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


class TrainingError(RuntimeError):
    """The run cannot go on (repeated env crashes, non-finite losses); a checkpoint has been saved."""


class StopSignal:
    """SIGINT / SIGTERM ask the loop to stop at the next env step and save; a second one stops at once."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received}: saving a checkpoint and stopping (send it again to stop at once)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.received is not None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(ppo: PPO) -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "minibatches": ppo.generator.get_state(),
    }


def set_rng_state(state: dict, ppo: PPO) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    ppo.generator.set_state(state["minibatches"])


def to_tensors(tree):
    """numpy arrays -> tensors, so env state fits a weights_only checkpoint."""
    if isinstance(tree, dict):
        return {k: to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_tensors(v) for v in tree]
    return torch.from_numpy(tree.copy()) if isinstance(tree, np.ndarray) else tree


def to_arrays(tree):
    if isinstance(tree, dict):
        return {k: to_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_arrays(v) for v in tree]
    return tree.numpy() if isinstance(tree, torch.Tensor) else tree


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
        max_crashes=cfg.max_env_crashes,
        distribution_mode=cfg.distribution_mode,
        start_level=cfg.start_level,
        num_levels=cfg.num_levels,
        episodic_life=cfg.episodic_life,
        repeat_action_probability=cfg.sticky_actions,
    )


def make_buffer(cfg: Config, policy: ActorCritic, envs: VecEnv, device: torch.device) -> RolloutBuffer:
    feature_dim = policy.feature_dim if policy.caches_features else None
    return RolloutBuffer(cfg.num_steps, cfg.num_envs, envs.obs_shape, device, feature_dim, envs.frame_channels)


class HostToDevice:
    """Host arrays -> device tensors. On CUDA through reused pinned buffers and non-blocking copies (each
    buffer is rewritten only once its last copy has finished); on CPU without any copy."""

    def __init__(self, device: torch.device):
        self.device = device
        self.slots: dict[tuple, tuple[torch.Tensor, torch.cuda.Event | None]] = {}

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.as_tensor(array)
        key = (array.shape, array.dtype.str)
        pinned, copied = self.slots.get(key) or (torch.from_numpy(np.empty_like(array)).pin_memory(), None)
        if copied is not None:
            copied.synchronize()
        pinned.numpy()[...] = array
        tensor = pinned.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.slots[key] = (pinned, event)
        return tensor


def collect_rollout(
    envs: VecEnv,
    policy: ActorCritic,
    buffer: RolloutBuffer,
    obs: np.ndarray,
    scaler: RewardScaler,
    timing: dict[str, float],
    should_stop=lambda: False,
    to_device: HostToDevice | None = None,
) -> tuple[np.ndarray, list, bool]:
    """Fill `buffer` with num_steps steps of every env, starting from `obs`; `to_device` keeps its pinned
    buffers from one rollout to the next.
    -> (next obs, finished episodes, whether the rollout is complete; not when `should_stop()` cut it)."""
    policy.eval()
    episodes = []
    to_device = to_device or HostToDevice(buffer.device)
    for t in range(buffer.num_steps):
        if should_stop():
            return obs, episodes, False
        tic = time.perf_counter()
        obs_t = to_device(obs)  # (N, K*C, H, W) uint8: frames become floats on the device
        with torch.inference_mode():
            act = policy.act(obs_t)
        actions = act.action.cpu().numpy()  # the one sync per step: the envs need the actions
        tac = time.perf_counter()
        result = envs.step(actions)
        toc = time.perf_counter()
        dones = result.terminated | result.truncated
        rewards_dones = to_device(np.stack([scaler(result.rewards, dones), dones.astype(np.float32)]))  # (2, N)
        bootstrap = torch.zeros(envs.num_envs, device=buffer.device)
        if result.truncated.any():  # time limit: the episode's value beyond it is V(final obs), not 0
            with torch.inference_mode():
                final = to_device(result.final_obs[result.truncated])
                bootstrap[to_device(result.truncated)] = policy.value(final)
        inputs = act.features if policy.caches_features else obs_t
        buffer.add(t, inputs, act.action, act.logprob, act.value, rewards_dones[0], rewards_dones[1], bootstrap)
        obs = result.obs
        episodes.extend(result.episodes)
        timing["inference"] += tac - tic + time.perf_counter() - toc
        timing["env"] += toc - tac
    return obs, episodes, True


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A tqdm bar on a terminal; on a pipe (CI logs), one plain line every `interval` seconds."""

    def __init__(self, total: int, initial: int, interval: float):
        self.total, self.interval, self.last = total, interval, 0.0
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True)

    def update(self, step: int, sps: float, ret: str, best: float, eta: float, force: bool = False) -> None:
        stats = f"{sps:.0f} sps | return {ret} | best eval {best:.2f}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(stats)
        elif force or time.time() - self.last >= self.interval:
            self.last = time.time()
            print(
                f"step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%) | {stats} | eta {format_duration(eta)}",
                flush=True,
            )

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """One run: builds envs, policy and PPO from a Config (or a checkpoint to resume), then `run()`s
    collect -> GAE -> update -> log -> evaluate -> checkpoint until the step budget is spent."""

    def __init__(self, cfg: Config):
        validate(cfg)
        self.cfg = cfg
        resume = load_checkpoint(cfg.resume) if cfg.resume else None
        self.logdir = prepare_logdir(cfg)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        atomic_write(self.logdir / "config.json", lambda f: f.write(json.dumps(cfg.public_dict(), indent=2).encode()))

        self.envs = make_train_env(cfg)
        # evaluation only runs between updates: a quarter of the cores' worker processes (~100 MB each) do
        self.eval_envs = make_eval_env(
            cfg.public_dict(),
            min(cfg.eval_envs, cfg.eval_episodes),
            cfg.seed,
            num_workers=max(1, (os.cpu_count() or 1) // 4),
        )
        self.spec = PolicySpec(
            cfg.backbone,
            self.envs.obs_shape,
            self.envs.frame_channels,
            self.envs.num_actions,
            cfg.head_hidden,
            cfg.freeze_backbone,
        )
        pretrained = cfg.pretrained and resume is None  # a resumed run's weights come from its checkpoint
        self.policy = ActorCritic(self.spec, pretrained, cfg.pretrained_file if pretrained else "").to(self.device)
        self.policy.amp = cfg.amp
        if cfg.compile:
            self.policy.backbone.compile()  # in place: checkpoints keep the plain parameter names
        self.ppo = PPO(self.policy, cfg, seed=cfg.seed)
        self.buffer = make_buffer(cfg, self.policy, self.envs, self.device)
        self.to_device = HostToDevice(self.device)
        self.scaler = RewardScaler(reward_mode(cfg), cfg.num_envs, cfg.gamma)
        self.history = EvalHistory(self.logdir)
        self.episodes = EpisodeLog()

        self.global_step = self.update = self.bad_updates = self.evaluations = 0
        self.best_return, self.last_eval = -math.inf, None
        self.next_eval = cfg.eval_interval
        self.timing = {"env": 0.0, "inference": 0.0, "update": 0.0}
        self.elapsed_before = 0.0  # seconds spent by the run before this process (resume)
        self.obs = self.restore(resume) if resume else self.envs.reset()
        self.logger = RunLogger(cfg, self.logdir, resume["resume"]["wandb_id"] if resume else None)

    # ---------------------------------------------------------------------------- checkpoints

    def checkpoint_payload(self, with_env_state: bool = True) -> dict:
        env_state = self.envs.get_state() if with_env_state else None
        return {
            "config": self.cfg.public_dict(),
            "policy_spec": self.spec.to_dict(),
            "model": self.policy.state_dict(),
            "optimizer": self.ppo.optimizer.state_dict(),
            "global_step": self.global_step,
            "best_eval_return": self.best_return,
            "eval_return": self.last_eval,
            "resume": {
                "update": self.update,
                "next_eval": self.next_eval,
                "bad_updates": self.bad_updates,
                "evaluations": self.evaluations,
                "timing": self.timing,
                "elapsed": self.elapsed(),
                "rng": rng_state(self.ppo),
                "reward_scaler": self.scaler.state_dict(),
                "episodes": self.episodes.state_dict(),
                "obs": torch.from_numpy(self.obs.copy()),
                "env_state": to_tensors(env_state),
                "wandb_id": self.logger.wandb_id,
            },
        }

    def save(self, name: str, with_env_state: bool = True) -> bool:
        """Write a checkpoint atomically; a failed write (disk full...) keeps the previous file and is
        reported, never fatal."""
        path = self.logdir / name
        try:
            save_checkpoint(path, self.checkpoint_payload(with_env_state))
            return True
        except OSError as e:
            warnings.warn(f"could not write {path} ({e.strerror or e}); the previous file is intact", stacklevel=2)
            return False

    def restore(self, payload: dict) -> np.ndarray:
        """Continue from a checkpoint: weights, optimizer, counters, RNGs, reward statistics, game state.
        -> the obs to continue from."""
        try:
            self.policy.load_state_dict(payload["model"])
            self.ppo.optimizer.load_state_dict(payload["optimizer"])
            state = payload["resume"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.cfg.resume} cannot be resumed: {str(e).splitlines()[0][:200]}") from e
        self.global_step, self.update = payload["global_step"], state["update"]
        self.best_return, self.last_eval = payload["best_eval_return"], payload["eval_return"]
        self.next_eval, self.bad_updates = state["next_eval"], state["bad_updates"]
        self.evaluations = state["evaluations"]
        self.timing, self.elapsed_before = dict(state["timing"]), state["elapsed"]
        set_rng_state(state["rng"], self.ppo)
        self.scaler.load_state_dict(state["reward_scaler"])
        self.episodes.load_state_dict(state["episodes"])
        self.history.load(self.global_step)
        truncate_metrics(self.logdir / "metrics.jsonl", self.global_step)
        print(f"resuming {self.logdir} at step {self.global_step:,}")
        if state["env_state"] is None:
            warnings.warn(f"{self.cfg.env} game state cannot be saved: the resumed run starts new games", stacklevel=2)
            return self.envs.reset()
        return self.envs.set_state(to_arrays(state["env_state"]))

    # ---------------------------------------------------------------------------------- loop

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start

    def run(self) -> dict:
        """Train until --steps (or --stop-after, or a signal); -> summary, also in `summary.json`."""
        cfg = self.cfg
        print(
            f"pixelppo: {cfg.env} for {cfg.steps:,} steps on {self.device}, {cfg.num_envs} envs, "
            f"backbone {cfg.backbone} -> {self.logdir}"
        )
        self.start = last_save = time.time()
        steps_at_start = self.global_step
        self.progress = Progress(cfg.num_updates * cfg.batch_size, self.global_step, cfg.progress_interval)
        stop_reason = None
        try:
            with StopSignal() as self.stop:
                while self.update < cfg.num_updates:
                    if not self.train_one_update(self.stop):
                        stop_reason = self.stop.received
                        break
                    self.maybe_evaluate()
                    if self.stop():  # a signal during the evaluation
                        stop_reason = self.stop.received
                        break
                    if time.time() - last_save > cfg.save_interval * 60:
                        self.save("last.pth")
                        last_save = time.time()
                    self.show_progress(steps_at_start)
                    if cfg.stop_after and self.global_step >= cfg.stop_after and self.update < cfg.num_updates:
                        stop_reason = f"--stop-after {cfg.stop_after:,}"
                        break
            self.save("last.pth")
        except (EnvCrashError, TrainingError) as e:
            saved = self.save("last.pth", with_env_state=False)
            raise TrainingError(f"{e}; {'saved' if saved else 'could not save'} {self.logdir / 'last.pth'}") from e
        except KeyboardInterrupt:
            print(f"stopped at once at step {self.global_step:,}; last.pth is from the last save", file=sys.stderr)
            raise
        finally:
            self.close()
        if stop_reason:
            print(f"stopped ({stop_reason}) at step {self.global_step:,}; continue with --resume {self.logdir}")
        return self.write_summary(stop_reason)

    def train_one_update(self, stop: StopSignal) -> bool:
        """Collect one rollout and run PPO on it; False when a stop signal cut the rollout (it is dropped)."""
        cfg = self.cfg
        lr = learning_rate(cfg, self.update / cfg.num_updates)
        self.ppo.set_lr(lr)
        self.obs, finished, complete = collect_rollout(
            self.envs, self.policy, self.buffer, self.obs, self.scaler, self.timing, stop, self.to_device
        )
        self.episodes.add(finished)
        if not complete:
            return False

        tic = time.perf_counter()
        with torch.inference_mode():
            last_values = self.policy.value(torch.as_tensor(self.obs, device=self.device))
        self.buffer.compute_advantages(last_values, cfg.gamma, cfg.gae_lambda)
        stats = self.ppo.update(self.buffer)
        self.timing["update"] += time.perf_counter() - tic
        self.global_step += cfg.batch_size
        self.update += 1
        self.check_finite(stats)

        metrics = (
            {f"losses/{k}": v for k, v in stats.items()}
            | {"charts/learning_rate": lr, "charts/episodes": self.episodes.count}
            | {"perf/sps": self.global_step / max(self.elapsed(), 1e-9)}
            | {f"perf/{k}_seconds": v for k, v in self.timing.items()}
            | self.episodes.crafter_metrics()
        )
        if finished:
            metrics["charts/episode_return"] = float(np.mean([e.ret for e in finished]))
            metrics["charts/episode_length"] = float(np.mean([e.length for e in finished]))
        self.logger.log(self.global_step, metrics)
        return True

    def check_finite(self, stats: dict) -> None:
        """Updates skip non-finite minibatches (the weights stay as they were); stop when whole updates
        keep failing."""
        if stats["skipped_minibatches"]:
            warnings.warn(
                f"update {self.update}: skipped {stats['skipped_minibatches']} of {stats['minibatches']} "
                "minibatches with a non-finite loss or gradient",
                stacklevel=2,
            )
        all_bad = stats["skipped_minibatches"] == stats["minibatches"]
        self.bad_updates = self.bad_updates + 1 if all_bad else 0
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise TrainingError(
                f"{self.bad_updates} consecutive updates had only non-finite losses; stopped with the last good weights"
            )

    def maybe_evaluate(self) -> None:
        """Evaluate every --eval-interval steps and at the end; keep best_model.pth on improvement."""
        cfg = self.cfg
        if self.global_step < self.next_eval and self.update < cfg.num_updates:
            return
        self.evaluations += 1
        record = cfg.eval_video and (self.evaluations - 1) % cfg.video_every == 0
        result = run_episodes(
            self.policy,
            self.eval_envs,
            cfg.eval_episodes,
            self.device,
            seed=cfg.seed,
            video_frames=cfg.video_frames if record else 0,
            should_stop=self.stop,
        )
        if not result.complete:
            self.evaluations -= 1
            return  # stopping: this evaluation is dropped (a resumed run redoes it); the run saves and exits
        while self.next_eval <= self.global_step:
            self.next_eval += cfg.eval_interval
        summary = self.history.add(self.global_step, result)
        self.last_eval = summary["mean_return"]
        improved = self.last_eval > self.best_return
        if improved:
            self.best_return = self.last_eval
            self.save("best_model.pth")
        metrics = {
            "eval/mean_return": self.last_eval,
            "eval/std_return": summary["std_return"],
            "eval/mean_length": summary["mean_length"],
            "eval/best_return": self.best_return,
        }
        if "crafter_score" in summary:
            metrics["eval/crafter_score"] = summary["crafter_score"]
            metrics |= {f"eval/success_{k}": v for k, v in summary["success_rates"].items()}
        self.logger.log(self.global_step, metrics)
        if record:
            video = write_video(result.frames, self.logdir / "videos" / f"eval_{self.global_step:09d}.mp4")
            self.logger.log_video(self.global_step, video)
        plot_learning_curve(self.logdir / "metrics.jsonl", self.logdir / "learning_curve.png", cfg.env)
        self.progress.write(
            f"eval @ {self.global_step:,}: return {self.last_eval:.2f} +- {summary['std_return']:.2f} over "
            f"{len(result.returns)} episodes{' (new best, saved best_model.pth)' if improved else ''}"
        )
        self.save("last.pth")

    def show_progress(self, steps_at_start: int) -> None:
        session = max(time.time() - self.start, 1e-9)
        sps = (self.global_step - steps_at_start) / session
        recent = self.episodes.recent_returns
        ret = f"{np.mean(recent):.2f} ({len(recent)} eps)" if recent else "n/a"
        eta = (self.progress.total - self.global_step) / max(sps, 1e-9)
        first_or_last = self.update - 1 == steps_at_start // self.cfg.batch_size or self.update == self.cfg.num_updates
        self.progress.update(self.global_step, sps, ret, self.best_return, eta, force=first_or_last)

    def write_summary(self, stop_reason: str | None) -> dict:
        summary = {
            "global_step": self.global_step,
            "finished": stop_reason is None,
            "stopped_by": stop_reason,
            "best_eval_return": self.best_return,
            "last_eval_return": self.last_eval,
            "sps": self.global_step / max(self.elapsed(), 1e-9),
            "seconds": self.elapsed(),
            "time_split_seconds": self.timing,
            "train_episodes": self.episodes.count,
        } | self.episodes.crafter_metrics()
        atomic_write(self.logdir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        if stop_reason is None:
            print(
                f"done: {self.global_step:,} steps at {summary['sps']:.0f} sps; best eval return "
                f"{self.best_return:.2f}; checkpoints in {self.logdir}"
            )
        return summary

    def close(self) -> None:
        if hasattr(self, "progress"):
            self.progress.close()
        self.envs.close()
        self.eval_envs.close()
        self.logger.close()
        if (self.logdir / "metrics.jsonl").exists():
            plot_learning_curve(self.logdir / "metrics.jsonl", self.logdir / "learning_curve.png", self.cfg.env)


def train(cfg: Config) -> dict:
    """Run one training (or continue one with cfg.resume); -> the final summary."""
    return Trainer(cfg).run()


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    try:
        cfg = config_from_args(argv)
        summary = train(cfg)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, EnvCrashError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stopped_by = summary["stopped_by"] or ""
    return 128 + signal.Signals[stopped_by] if stopped_by.startswith("SIG") else 0


if __name__ == "__main__":
    sys.exit(main())
