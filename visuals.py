"""What people look at: episode videos, the learning curve, value-vs-return plots and a live window."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from errors import UsageError


def _pyplot():
    import matplotlib

    if not os.environ.get("PIXELPPO_LIVE_VIEW"):
        matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def upscale(frames: np.ndarray, min_size: int = 256) -> np.ndarray:
    """(T, H, W, 3) uint8 -> nearest-neighbour upscaled so the short side is at least `min_size`,
    and H, W multiples of 16 (what video codecs want)."""
    factor = max(1, -(-min_size // min(frames.shape[1:3])))
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = (-frames.shape[1]) % 16, (-frames.shape[2]) % 16
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def write_video(frames: np.ndarray, path: Path, fps: int = 15) -> Path:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 (PyAV); falls back to a gif where no mp4 encoder
    works. -> the path written."""
    import imageio.v3 as iio

    frames = upscale(np.asarray(frames))
    path = Path(path).with_suffix(".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        iio.imwrite(path, frames, plugin="pyav", fps=fps, codec="libx264")
        return path
    except (ImportError, ValueError, OSError) as e:
        warnings.warn(f"mp4 encoding failed ({e}); writing a gif instead", stacklevel=2)
        path.unlink(missing_ok=True)
        iio.imwrite(path.with_suffix(".gif"), frames, duration=1000 / fps, loop=0)
        return path.with_suffix(".gif")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_learning_curve(metrics_path: Path, out: Path, title: str = "") -> Path:
    """Training episode return (raw and smoothed) against steps, evaluation points marked."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["charts/episode_return"]) for r in rows if r.get("charts/episode_return") is not None]
    evals = [
        (r["step"], r["eval/mean_return"], r.get("eval/std_return") or 0.0) for r in rows if "eval/mean_return" in r
    ]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, returns = np.array(train).T
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, lw=1)
        window = max(1, len(returns) // 20)
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", lw=2, label="training episodes")
    if evals:
        steps, means, stds = np.array(evals).T
        ax.errorbar(steps, means, yerr=stds, fmt="o", color="tab:orange", capsize=3, label="evaluation")
        best = int(np.argmax(means))
        ax.plot(steps[best], means[best], marker="*", ms=16, color="tab:red", ls="none", label="best (saved)")
    ax.set(xlabel="environment steps", ylabel="episode return", title=title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(loc="best")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_value_analysis(
    values: list[np.ndarray], returns: list[np.ndarray], ev: float, out: Path, title: str = ""
) -> Path:
    """Predicted value V(s_t) against the realized discounted return G_t: along the first episodes and
    as a scatter over all steps."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    offset = 0
    for i, (v, g) in enumerate(zip(values[:3], returns[:3], strict=True)):
        t = np.arange(offset, offset + len(v))
        left.plot(t, g, color="tab:blue", lw=1.5, label="realized return $G_t$" if i == 0 else None)
        left.plot(t, v, color="tab:orange", lw=1.5, label="predicted value $V(s_t)$" if i == 0 else None)
        left.axvline(offset, color="gray", lw=0.5)
        offset += len(v)
    left.set(xlabel="step (episodes back to back)", ylabel="discounted return", title="along episodes")
    left.legend(loc="best")
    all_v, all_g = np.concatenate(values), np.concatenate(returns)
    right.scatter(all_g, all_v, s=4, alpha=0.4)
    lo, hi = float(min(all_g.min(), all_v.min())), float(max(all_g.max(), all_v.max()))
    right.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--")
    right.set(xlabel="realized return $G_t$", ylabel="predicted value $V(s_t)$", title=f"explained variance {ev:.3f}")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class LiveView:
    """A window showing env 0 while episodes play (`--render`)."""

    def __init__(self, title: str):
        if not display_available():
            raise UsageError("--render needs a display, and none was found (DISPLAY is not set); use --record")
        os.environ["PIXELPPO_LIVE_VIEW"] = "1"
        self.plt = _pyplot()
        self.plt.ion()
        self.fig, self.ax = self.plt.subplots()
        self.ax.set_title(title)
        self.ax.axis("off")
        self.image = None

    def show(self, frame: np.ndarray) -> None:
        if self.image is None:
            self.image = self.ax.imshow(frame)
        else:
            self.image.set_data(frame)
        self.plt.pause(0.001)

    def close(self) -> None:
        self.plt.close(self.fig)
