"""What people look at: episode videos, the learning curve (on Crafter with the Crafter score), per-achievement
success rates, value-vs-return plots and a live window."""

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


def save_figure(fig, out: Path) -> Path:
    """Write a figure as a PNG, making its folder first; -> the path written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def is_crafter(rows: list[dict]) -> bool:
    return any("crafter/score" in r or "eval/crafter_score" in r for r in rows)


def mark_best(ax, steps: np.ndarray, values: np.ndarray) -> None:
    best = int(np.argmax(values))
    ax.plot(steps[best], values[best], marker="*", ms=16, color="tab:red", ls="none", label="best (saved)")


def finish_panel(ax, ylabel: str, title: str) -> None:
    ax.set(xlabel="environment steps", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")


def plot_return_panel(ax, rows: list[dict], title: str, mark_best_return: bool) -> None:
    """Training episode return (raw and smoothed), evaluations with their spread."""
    train = [(r["step"], r["charts/episode_return"]) for r in rows if r.get("charts/episode_return") is not None]
    evals = [
        (r["step"], r["eval/mean_return"], r.get("eval/std_return") or 0.0) for r in rows if "eval/mean_return" in r
    ]
    if train:
        steps, returns = np.array(train).T
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, lw=1)
        window = max(1, len(returns) // 20)
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", lw=2, label="training episodes")
    if evals:
        steps, means, stds = np.array(evals).T
        ax.errorbar(steps, means, yerr=stds, fmt="o", color="tab:orange", capsize=3, label="evaluation")
        if mark_best_return:
            mark_best(ax, steps, means)
    finish_panel(ax, "episode return", title)


def plot_crafter_score_panel(ax, rows: list[dict], title: str) -> None:
    """The Crafter score of all training episodes so far (metrics.jsonl's `crafter/score`, the published protocol)
    and of each evaluation's episodes."""
    train = [(r["step"], r["crafter/score"]) for r in rows if r.get("crafter/score") is not None]
    evals = [(r["step"], r["eval/crafter_score"]) for r in rows if r.get("eval/crafter_score") is not None]
    if train:
        ax.plot(*np.array(train).T, color="tab:blue", lw=2, label="training episodes, all so far (published protocol)")
    if evals:
        steps, scores = np.array(evals).T
        ax.plot(steps, scores, "o-", color="tab:orange", label="evaluation episodes")
        mark_best(ax, steps, scores)
    finish_panel(ax, "Crafter score (%)", title)


def learning_curve_figure(rows: list[dict], title: str = ""):
    """Episode return against steps; on Crafter the Crafter score first, then the return."""
    plt = _pyplot()
    if not is_crafter(rows):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        plot_return_panel(ax, rows, title, mark_best_return=True)
    else:  # the best checkpoint is the one with the best Crafter score, marked there
        fig, (score_ax, return_ax) = plt.subplots(1, 2, figsize=(14, 4.5), dpi=100)
        plot_crafter_score_panel(score_ax, rows, f"{title} Crafter score".strip())
        plot_return_panel(return_ax, rows, f"{title} episode return".strip(), mark_best_return=False)
    fig.tight_layout()
    return fig


def plot_learning_curve(metrics_path: Path, out: Path, title: str = "") -> Path:
    """learning_curve.png from a run's metrics.jsonl (see `learning_curve_figure`)."""
    return save_figure(learning_curve_figure(read_metrics(metrics_path), title), out)


def achievements_figure(rates: dict[str, float], title: str = ""):
    """One bar per achievement: the percent of episodes that unlocked it, on a log scale as in the Crafter paper
    (0% bars are empty; every bar is labelled with its rate)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    names = list(rates)
    bars = ax.bar(range(len(names)), [max(rates[n], 0.01) for n in names], color="tab:blue")
    ax.bar_label(bars, [f"{rates[n]:.3g}" for n in names], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(0.01, 200)  # room for the labels of 100% bars
    ax.yaxis.set_major_formatter("{x:g}")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=60, ha="right")
    ax.set(ylabel="success rate (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_run_figures(logdir: Path, title: str = "") -> dict[str, Path]:
    """Redraw a run's figures in its logdir: `learning_curve.png` (metrics.jsonl), and on Crafter `achievements.png`
    with the latest evaluation's success rates (eval_stats.json). -> name: path of each."""
    figures = {"learning_curve": learning_curve_figure(read_metrics(logdir / "metrics.jsonl"), title)}
    evals = json.loads(path.read_text()) if (path := logdir / "eval_stats.json").exists() else {}
    if evals.get("success_rates"):
        about = f"evaluation at step {evals['step'][-1]:,}, {evals['episodes'][-1]} episodes"
        figures["achievements"] = achievements_figure(evals["success_rates"][-1], f"{title} success rates, {about}")
    return {name: save_figure(fig, logdir / f"{name}.png") for name, fig in figures.items()}


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
    return save_figure(fig, out)


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
