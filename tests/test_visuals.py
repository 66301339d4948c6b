"""Where people look: a run's figures (the learning curve, on Crafter with the Crafter score; per-achievement
success rates; the value plot, into a folder that may not exist yet) and summary.json's names for Crafter scores."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

import visuals
from config import Config
from evaluation import EvalStats
from runlog import EpisodeLog, RunLogger
from scores import crafter_score
from vecenv import EpisodeStats
from visuals import achievements_figure, learning_curve_figure, plot_run_figures, plot_value_analysis

ACHIEVEMENTS = [f"achievement_{i:02d}" for i in range(22)]


def crafter_metrics() -> list[dict]:
    """metrics.jsonl rows of a short Crafter run: `crafter/score` of all training episodes so far at each update,
    two evaluations."""
    rows = [{"step": s, "charts/episode_return": float(s % 3), "crafter/score": s / 100} for s in range(100, 900, 100)]
    rows.insert(4, {"step": 400, "eval/mean_return": 2.0, "eval/std_return": 0.5, "eval/crafter_score": 7.0})
    rows.append({"step": 800, "eval/mean_return": 3.0, "eval/std_return": 0.5, "eval/crafter_score": 5.0})
    return rows


def add_crafter_evaluations(stats: EvalStats) -> None:
    """Two Crafter evaluations: every achievement at 50% at step 400, at 25% at step 800."""
    for step, rate in ((400, 50.0), (800, 25.0)):
        rates = dict.fromkeys(ACHIEVEMENTS, rate)
        stats.add({"step": step, "checkpoint": None, "set": "eval", "episodes": 4, "mean_return": 1.0,
                   "std_return": 0.0, "mean_length": 9.0, "returns": [], "lengths": [],
                   "crafter_score": crafter_score(rates), "success_rates": rates})  # fmt: skip


def line_data(ax, label: str) -> tuple[list, list]:
    line = next(line for line in ax.lines if line.get_label() == label)
    return list(line.get_xdata()), list(line.get_ydata())


def test_crafter_learning_curve_plots_the_crafter_score_first():
    """The training line is metrics.jsonl's `crafter/score` (all training episodes, the published protocol), as
    logged; the best checkpoint is marked at the best evaluation score, not the best return."""
    fig = learning_curve_figure(crafter_metrics(), "crafter")
    score_ax, return_ax = fig.axes
    assert score_ax.get_ylabel() == "Crafter score (%)" and return_ax.get_ylabel() == "episode return"
    train = line_data(score_ax, "training episodes, all so far (published protocol)")
    assert train == ([100, 200, 300, 400, 500, 600, 700, 800], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert line_data(score_ax, "evaluation episodes") == ([400, 800], [7.0, 5.0])
    assert line_data(score_ax, "best (saved)") == ([400], [7.0])
    assert "best (saved)" not in [line.get_label() for line in return_ax.lines]


def test_other_games_plot_the_return_and_mark_the_best_return():
    rows = [{"step": s, "charts/episode_return": float(s)} for s in range(100, 500, 100)]
    rows += [{"step": 200, "eval/mean_return": 1.0}, {"step": 400, "eval/mean_return": 3.0}]
    (ax,) = learning_curve_figure(rows, "procgen/bigfish").axes
    assert ax.get_ylabel() == "episode return" and line_data(ax, "best (saved)") == ([400], [3.0])


def test_achievement_bars_show_each_success_rate():
    rates = {name: [0.0, 0.05, 3.0, 100.0][i % 4] for i, name in enumerate(ACHIEVEMENTS)}
    ax = achievements_figure(rates, "crafter").axes[0]
    assert len(ax.patches) == 22
    assert [t.get_text() for t in ax.get_xticklabels()] == [name.replace("_", " ") for name in ACHIEVEMENTS]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [max(rate, 0.01) for rate in rates.values()]  # 0%: an empty bar on the log scale
    assert [t.get_text() for t in ax.texts] == [f"{rate:.3g}" for rate in rates.values()]


def test_run_figures_show_the_latest_crafter_evaluation(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in crafter_metrics()))
    add_crafter_evaluations(EvalStats(tmp_path))
    drawn = []
    monkeypatch.setattr(visuals, "achievements_figure", lambda *args: drawn.append(args) or achievements_figure(*args))
    figures = plot_run_figures(tmp_path, "crafter")
    assert drawn == [(dict.fromkeys(ACHIEVEMENTS, 25.0), "crafter success rates, evaluation at step 800, 4 episodes")]
    assert figures == {"learning_curve": tmp_path / "learning_curve.png", "achievements": tmp_path / "achievements.png"}
    assert iio.imread(figures["learning_curve"]).shape[:2] == (450, 1400)  # score and return side by side
    assert iio.imread(figures["achievements"]).shape[:2] == (500, 1200)


def test_run_figures_elsewhere_are_the_learning_curve(tmp_path):
    rows = [{"step": 100, "charts/episode_return": 1.0}, {"step": 100, "eval/mean_return": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert plot_run_figures(tmp_path, "atari/Pong") == {"learning_curve": tmp_path / "learning_curve.png"}
    assert iio.imread(tmp_path / "learning_curve.png").shape[:2] == (450, 800)


def test_figures_go_to_wandb_as_images(tmp_path):
    """Each evaluation's figures: in the logdir and in the (offline, real) wandb run."""
    logger = RunLogger(Config(env="crafter", wandb_mode="offline"), tmp_path)
    for row in crafter_metrics():
        logger.log(row.pop("step"), row)
    add_crafter_evaluations(EvalStats(tmp_path))
    logger.log_figures(800, "crafter")
    logger.close()
    media = next(tmp_path.glob("wandb/offline-run-*/files/media/images/figures"))
    assert sorted(path.name.rsplit("_", 2)[0] for path in media.glob("*.png")) == ["achievements", "learning_curve"]
    assert (tmp_path / "learning_curve.png").is_file() and (tmp_path / "achievements.png").is_file()


def test_value_plot_makes_its_folder(tmp_path):
    """evaluate.py --analyze-value on a logdir never evaluated: <logdir>/evaluation does not exist yet."""
    out = tmp_path / "run_1" / "evaluation" / "value.png"
    values, returns = [np.linspace(0, 1, 5)], [np.linspace(0, 1.1, 5)]
    assert plot_value_analysis(values, returns, 0.9, out, "test") == out
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_training_crafter_score_counts_every_training_episode():
    """summary.json's `train_crafter_score`: the published protocol, over all training episodes (not a window)."""
    log = EpisodeLog(window=10)
    episodes = [EpisodeStats(0, 1.0, 5, {"a": int(i < 30), "b": 1}) for i in range(150)]
    log.add(episodes)
    summary = log.crafter_summary()
    assert summary["train_success_rates"] == {"a": 20.0, "b": 100.0}
    assert summary["train_crafter_score"] == pytest.approx(crafter_score({"a": 20.0, "b": 100.0}))
    assert summary["train_crafter_score"] == log.crafter_metrics()["crafter/score"]
    assert EpisodeLog().crafter_summary() == {}


def test_eval_crafter_summary_names_the_best_and_the_last_evaluation(tmp_path):
    stats = EvalStats(tmp_path)
    assert stats.crafter_summary() == {}
    add_crafter_evaluations(stats)
    assert stats.crafter_summary() == {
        "best_eval_crafter_score": pytest.approx(50.0),
        "last_eval_crafter_score": pytest.approx(25.0),
        "last_eval_step": 800,
        "last_eval_episodes": 4,
        "last_eval_success_rates": dict.fromkeys(ACHIEVEMENTS, 25.0),
    }
