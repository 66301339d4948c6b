"""What a run leaves behind and shows: its logdir, metrics (metrics.jsonl, wandb, TensorBoard), run info,
training-episode statistics and progress output."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import torch

from checkpoint import atomic_write
from config import Config
from errors import UsageError
from hardware import native_bf16
from scores import crafter_score
from visuals import plot_run_figures

MIN_FREE_MB = 200


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


# -------------------------------------------------------------------------------------- logging


class RunLogger:
    """Metrics to `metrics.jsonl` always, to wandb unless disabled, and to TensorBoard with --tensorboard, all
    under the same keys. wandb trouble never stops a run: a failing wandb is dropped with one warning."""

    def __init__(
        self, cfg: Config, logdir: Path, wandb_id: str | None = None, info: dict | None = None, enabled: bool = True
    ):
        """`enabled=False` (torchrun ranks other than 0) logs nothing anywhere."""
        self.path = logdir / "metrics.jsonl"
        self.metrics_file = open(self.path, "a") if enabled else None  # noqa: SIM115 (open for the run, see close)
        self.wandb = init_wandb(cfg, logdir, wandb_id, info or {}) if enabled else None
        self.tensorboard = None
        if cfg.tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(logdir / "tensorboard"))

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        local = {k: v for k, v in clean.items() if isinstance(v, int | float | str | None)}
        if self.metrics_file is None:
            return
        if local:
            self.metrics_file.write(json.dumps({"step": step, "time": round(time.time(), 3), **local}) + "\n")
            self.metrics_file.flush()
        if self.tensorboard is not None:
            for key, value in local.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
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

    def log_figures(self, step: int, title: str) -> None:
        """Redraw the run's figures in the logdir (visuals.plot_run_figures) and log them to wandb as images."""
        if self.metrics_file is None:
            return
        figures = plot_run_figures(self.path.parent, title)
        if self.wandb is not None:
            import wandb

            self.log(step, {f"figures/{name}": wandb.Image(str(path)) for name, path in figures.items()})

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
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


def init_wandb(cfg: Config, logdir: Path, run_id: str | None, info: dict):
    """wandb run: online with a key or login, offline files in the logdir otherwise; `run_id` resumes a
    run; `info` joins the config. An online start that fails (no network, bad key, service error) falls
    back to offline."""
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
        config=cfg.public_dict() | {"hardware": hardware_info(), "git": git_info()} | info,
        group=os.environ.get("WANDB_RUN_GROUP") or cfg.env,
        tags=[tag.strip() for tag in os.environ.get("WANDB_TAGS", "").split(",") if tag.strip()] or None,
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
        return init_wandb(dataclasses.replace(cfg, wandb_mode="offline"), logdir, run_id, info)
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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what the platform module knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    """What a timing ran on, e.g. "NVIDIA H200" or "AMD EPYC"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def hardware_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_native_bf16": native_bf16(torch.device("cpu")),
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

    def success_rates(self) -> dict[str, float]:
        """Percent of all training episodes that unlocked each achievement (Crafter; empty elsewhere)."""
        return {name: 100.0 * n / self.count for name, n in sorted(self.unlocked.items())}

    def crafter_metrics(self) -> dict:
        """metrics.jsonl's `crafter/` keys: score and success rates over all training episodes so far."""
        if not self.unlocked:
            return {}
        rates = self.success_rates()
        return {"crafter/score": crafter_score(rates)} | {f"crafter/success_{k}": v for k, v in rates.items()}

    def crafter_summary(self) -> dict:
        """summary.json's Crafter score of the training episodes: all of them, the published protocol."""
        if not self.unlocked:
            return {}
        rates = self.success_rates()
        return {"train_crafter_score": crafter_score(rates), "train_success_rates": rates}

    def state_dict(self) -> dict:
        return {"recent_returns": list(self.recent_returns), "count": self.count, "unlocked": dict(self.unlocked)}

    def load_state_dict(self, state: dict) -> None:
        self.recent_returns.extend(state["recent_returns"])
        self.count, self.unlocked = state["count"], dict(state["unlocked"])


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A tqdm bar on a terminal; on a pipe (CI logs), one plain line `first_after` seconds after the start,
    then one every `interval` seconds: steps, SPS, the phase (collecting / updating / evaluating), returns."""

    def __init__(self, total: int, initial: int, interval: float, first_after: float = 5.0, quiet: bool = False):
        self.total, self.interval, self.quiet = total, interval, quiet
        self.next_line = time.time() + min(first_after, interval)
        self.bar = None
        if sys.stdout.isatty() and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True)

    def update(self, step: int, phase: str, sps: float, ret: str, best: str, force: bool = False) -> None:
        if self.quiet:
            return
        stats = f"{phase} | {sps:.0f} sps | return {ret} | best eval {best}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(stats, refresh=False)
        elif force or time.time() >= self.next_line:
            self.next_line = time.time() + self.interval
            eta = (self.total - step) / max(sps, 1e-9)
            percent = 100 * step / self.total
            print(f"step {step:,}/{self.total:,} ({percent:.0f}%) | {stats} | eta {format_duration(eta)}", flush=True)

    def write(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
