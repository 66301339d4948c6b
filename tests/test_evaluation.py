"""Scores the way benchmarks publish them, videos, plots and the live view."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from toy_env import GridGoalVecEnv

import evaluate
import evaluation
from config import Config
from evaluate import discounted_returns
from evaluation import episode_quotas, run_episodes
from policy import ActorCritic, PolicySpec
from scores import (
    ATARI_RANDOM_HUMAN,
    PROCGEN_RETURN_RANGES,
    atari_human_normalized,
    crafter_score,
    procgen_normalized,
    success_rates,
)
from visuals import plot_learning_curve, write_video


def test_crafter_score_by_hand():
    episodes = [{"a": 1, "b": 0, "c": 2}, {"a": 3, "b": 0, "c": 0}]
    rates = success_rates(episodes)
    assert rates == {"a": 100.0, "b": 0.0, "c": 50.0}
    assert crafter_score(rates) == pytest.approx((101 * 1 * 51) ** (1 / 3) - 1)
    assert crafter_score({"a": 0.0, "b": 0.0}) == 0.0


def test_procgen_normalization_uses_the_published_ranges():
    assert (
        set(PROCGEN_RETURN_RANGES["easy"]) == set(PROCGEN_RETURN_RANGES["hard"])
        and len(PROCGEN_RETURN_RANGES["easy"]) == 16
    )
    assert PROCGEN_RETURN_RANGES["easy"]["starpilot"] == (2.5, 64.0)
    assert PROCGEN_RETURN_RANGES["easy"]["bossfight"] == (0.5, 13.0)
    assert PROCGEN_RETURN_RANGES["easy"]["bigfish"] == (1.0, 40.0)
    assert procgen_normalized("starpilot", "easy", 33.25) == pytest.approx(0.5)
    assert procgen_normalized("bigfish", "easy", 12.3) == pytest.approx((12.3 - 1) / 39)
    assert procgen_normalized("coinrun", "memory", 5.0) is None


def test_atari_human_normalization_uses_the_published_references():
    assert len(ATARI_RANDOM_HUMAN) == 57
    assert ATARI_RANDOM_HUMAN["breakout"] == (1.7, 30.5) and ATARI_RANDOM_HUMAN["pong"] == (-20.7, 14.6)
    assert atari_human_normalized("breakout", 30.5) == pytest.approx(1.0)
    assert atari_human_normalized("pong", -20.7) == pytest.approx(0.0)
    assert atari_human_normalized("alien", 227.8 + (7127.7 - 227.8) / 2) == pytest.approx(0.5)
    assert atari_human_normalized("adventure", 0.0) is None


def test_video_files_decode_with_the_right_frame_count(tmp_path):
    frames = np.zeros((37, 64, 64, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(37)[:, None, None] * 6
    path = write_video(frames, tmp_path / "clip.mp4")
    assert path.suffix == ".mp4"
    decoded = iio.imread(path, plugin="pyav")
    assert decoded.shape == (37, 256, 256, 3)
    assert abs(int(decoded[20, 100, 100, 0]) - 120) < 12  # content survives the codec


def test_recorded_eval_episode_has_one_frame_per_step():
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 10, 10), 3, 4, head_hidden=16, freeze_backbone=False))
    envs = GridGoalVecEnv(3, seed=0, limit=9, reachable=False)  # every episode lasts exactly 9 steps
    result = run_episodes(policy, envs, 3, torch.device("cpu"), video_frames=100, collect_values=True)
    assert result.frames.shape == (9, 10, 10, 3)
    assert [len(v) for v in result.values] == [9, 9, 9] and [len(r) for r in result.rewards] == [9, 9, 9]
    capped = run_episodes(policy, envs, 3, torch.device("cpu"), video_frames=4)
    assert capped.frames.shape[0] == 4


def test_episode_quotas_and_discounted_returns():
    assert episode_quotas(20, 8).tolist() == [3, 3, 3, 3, 2, 2, 2, 2]
    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


def test_learning_curve_is_a_valid_png(tmp_path):
    rows = [{"step": s, "charts/episode_return": math.sin(s / 100)} for s in range(0, 2000, 50)]
    rows += [{"step": 1000, "eval/mean_return": 0.5, "eval/std_return": 0.1}, {"step": 2000, "eval/mean_return": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    png = plot_learning_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert iio.imread(png).shape[:2] == (450, 800)


def test_render_without_a_display_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    (tmp_path / "last.pth").write_bytes(b"unused")
    assert evaluate.main([str(tmp_path / "last.pth"), "--render"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--render needs a display" in err and "\n" not in err


def test_bad_levels_argument():
    with pytest.raises(evaluate.UsageError, match="START:COUNT"):
        evaluate.parse_levels("200-1000")
    assert evaluate.parse_levels("500:50") == (500, 50)


def test_procgen_validation_and_test_levels_are_disjoint():
    """best_model.pth is picked on validation levels; evaluate.py reports the paper's test set (the full
    distribution), so selection never sees the levels it is scored on beyond chance overlap."""
    cfg = Config(env="procgen/starpilot", start_level=0, num_levels=200)
    train_levels = evaluate.level_sets(cfg, "")["train"]
    validation = evaluation.validation_levels(cfg)
    assert train_levels == (0, 200) and validation == (200, 1000)
    assert evaluate.level_sets(cfg, "")["test"] == evaluate.TEST_LEVELS == (0, 0)
    assert evaluate.parse_levels("") == (0, 0)


def test_best_checkpoint_is_selected_by_the_published_metric():
    crafter_row = {"mean_return": 9.0, "crafter_score": 3.5}
    assert evaluation.selection_score(crafter_row) == 3.5
    assert evaluation.selection_score({"mean_return": 21.0}) == 21.0


def test_a_stop_request_abandons_the_evaluation():
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 10, 10), 3, 4, head_hidden=16, freeze_backbone=False))
    calls = []
    result = run_episodes(
        policy, GridGoalVecEnv(2, limit=50, reachable=False), 4, torch.device("cpu"),
        should_stop=lambda: calls.append(1) or len(calls) > 5,
    )  # fmt: skip
    assert not result.complete and result.returns == [] and len(calls) == 6
