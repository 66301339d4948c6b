"""The evaluation library that train.py and evaluate.py share: playing full episodes on fresh evaluation envs
(`run_episodes` -> `EvalResult`), the eval envs of a run (`make_eval_env`, Procgen's validation levels), the
benchmarks' published scores and the metric that selects `best_model.pth`, and the eval-stats history
(`EvalStats`, one row per evaluation from `eval_row`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from checkpoint import atomic_write
from config import Config
from env import make_vec_env, parse_env_id
from policy import ActorCritic
from scores import atari_human_normalized, crafter_score, procgen_normalized, success_rates
from vecenv import EpisodeStats, VecEnv

VALIDATION_LEVELS = 1000  # Procgen levels after the training range: model selection during training


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    achievements: list[dict[str, int]] = field(default_factory=list)  # Crafter only
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8: env 0's first episode, when recorded
    values: list[np.ndarray] = field(default_factory=list)  # per episode V(s_t), when collected
    rewards: list[np.ndarray] = field(default_factory=list)  # per episode raw r_t, when collected
    complete: bool = True  # False when a stop request cut the evaluation short

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    def summary(self) -> dict:
        out = {
            "episodes": len(self.returns),
            "mean_return": self.mean_return,
            "std_return": float(np.std(self.returns)),
            "mean_length": float(np.mean(self.lengths)),
            "std_length": float(np.std(self.lengths)),
        }
        if self.achievements:
            rates = success_rates(self.achievements)
            out |= {"crafter_score": crafter_score(rates), "success_rates": rates}
        return out


def episode_quotas(num_episodes: int, num_envs: int) -> np.ndarray:
    """Episodes each env must finish. Fixed per env, so short episodes are not over-counted."""
    return np.array([num_episodes // num_envs + (i < num_episodes % num_envs) for i in range(num_envs)])


def run_episodes(
    policy: ActorCritic,
    envs: VecEnv,
    num_episodes: int,
    device: torch.device,
    deterministic: bool = False,
    seed: int = 0,
    video_frames: int = 0,
    collect_values: bool = False,
    on_step: Callable[[int, VecEnv], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> EvalResult:
    """Play `num_episodes` full episodes from a fresh reset and collect their raw returns.

    Actions are sampled from a generator seeded with `seed`, so evaluation never moves the training RNG.
    `video_frames` > 0 records env 0's first episode (at most that many frames); `collect_values` keeps
    V(s_t) and r_t of every counted episode; `on_step(finished_episodes, envs)` is called after each step.
    When `should_stop()` turns true the episodes are abandoned and the result is marked incomplete.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    quotas = episode_quotas(num_episodes, envs.num_envs)
    done = np.zeros(envs.num_envs, dtype=np.int64)
    finished: list[EpisodeStats] = []
    values, rewards = [[] for _ in range(envs.num_envs)], [[] for _ in range(envs.num_envs)]
    result = EvalResult([], [])
    frames = []
    was_training = policy.training
    policy.eval()
    obs = envs.reset()
    memory = policy.fresh_memory(envs.num_envs)
    state, starts = memory.state, memory.starts
    if video_frames:
        frames.append(envs.render(0))
    while (done < quotas).any():
        if should_stop():
            result.complete = False
            break
        with torch.inference_mode():
            act = policy.act(torch.as_tensor(obs, device=device), state, starts, deterministic, generator)
        step = envs.step(act.action.cpu().numpy())
        state, starts = act.state, torch.as_tensor(step.terminated | step.truncated, device=device)
        if collect_values:
            for i in range(envs.num_envs):
                values[i].append(float(act.value[i]))
                rewards[i].append(float(step.rewards[i]))
        ended_env0 = (step.terminated[0] or step.truncated[0]) and any(ep.env_index == 0 for ep in step.episodes)
        if video_frames and result.frames is None:
            if ended_env0 or len(frames) >= video_frames:
                result.frames = np.stack(frames)
            else:
                frames.append(envs.render(0))
        for ep in step.episodes:
            i = ep.env_index
            if done[i] < quotas[i]:
                done[i] += 1
                finished.append(ep)
                if collect_values:
                    result.values.append(np.array(values[i][-ep.length :]))
                    result.rewards.append(np.array(rewards[i][-ep.length :]))
            values[i], rewards[i] = [], []
        obs = step.obs
        if on_step is not None:
            on_step(len(finished), envs)
    policy.train(was_training)
    if video_frames and result.frames is None and frames:
        result.frames = np.stack(frames)
    result.returns = [ep.ret for ep in finished]
    result.lengths = [ep.length for ep in finished]
    result.achievements = [ep.achievements for ep in finished if ep.achievements is not None]
    return result


# --------------------------------------------------------------------------------------- eval envs


def validation_levels(cfg: Config) -> tuple[int, int]:
    """Procgen levels that pick `best_model.pth` during training: the block right after the training range
    (with unlimited training levels, the full distribution). Never evaluate.py's test levels."""
    if cfg.num_levels == 0:
        return 0, 0
    return cfg.start_level + cfg.num_levels, VALIDATION_LEVELS


def make_eval_env(
    cfg: Config, num_envs: int, seed: int, levels: tuple[int, int] | None = None, num_workers: int | None = None
) -> VecEnv:
    """Evaluation envs for the game and settings a run was trained with; Procgen plays `levels` (start,
    count), the validation levels by default; Crafter runs in `num_workers` processes (default: one per core)."""
    start, count = levels if levels is not None else validation_levels(cfg)
    return make_vec_env(
        cfg.env,
        num_envs,
        seed,
        cfg.history_length,
        evaluation=True,
        distribution_mode=cfg.distribution_mode,
        start_level=start,
        num_levels=count,
        repeat_action_probability=cfg.sticky_actions,
        num_workers=num_workers,
    )


# ----------------------------------------------------------------------------------------- scoring


def score(summary: dict, cfg: Config) -> dict:
    """Add the benchmark's normalized score to a summary."""
    spec = parse_env_id(cfg.env)
    if spec.family == "procgen":
        summary["normalized_return"] = procgen_normalized(spec.game, cfg.distribution_mode, summary["mean_return"])
    elif spec.family == "atari":
        summary["human_normalized"] = atari_human_normalized(spec.game, summary["mean_return"])
    return summary


def selection_score(row: dict) -> float:
    """What picks the best checkpoint: the family's published metric (Crafter score), else the mean return."""
    return row["crafter_score"] if "crafter_score" in row else row["mean_return"]


class EvalStats:
    """Evaluations as `eval_stats.pkl` (a dict of lists, one entry per evaluation) and `eval_stats.json`, one
    schema for training's evaluations and evaluate.py's: STAT_KEYS always, SCORE_KEYS where the game has them."""

    STAT_KEYS = (
        "step",
        "checkpoint",
        "set",
        "episodes",
        "mean_return",
        "std_return",
        "mean_length",
        "returns",
        "lengths",
    )
    SCORE_KEYS = ("crafter_score", "success_rates", "normalized_return", "human_normalized")

    def __init__(self, folder: Path):
        self.folder = folder
        self.stats: dict[str, list] = {k: [] for k in self.STAT_KEYS}

    def load(self, up_to_step: int) -> None:
        """Continue a resumed run's history, without evaluations made after its checkpoint."""
        path = self.folder / "eval_stats.json"
        if path.exists():
            stats = json.loads(path.read_text())
            keep = [i for i, step in enumerate(stats["step"]) if step <= up_to_step]
            self.stats = {k: [v[i] for i in keep] for k, v in stats.items()}

    def add(self, row: dict) -> None:
        """Append one evaluation (a row of `eval_row`) and rewrite both files atomically."""
        for key in self.STAT_KEYS + tuple(k for k in self.SCORE_KEYS if k in row):
            self.stats.setdefault(key, []).append(row[key])
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "eval_stats.pkl", lambda f: pickle.dump(self.stats, f))
        atomic_write(self.folder / "eval_stats.json", lambda f: f.write(json.dumps(self.stats, indent=1).encode()))

    def crafter_summary(self) -> dict:
        """summary.json's Crafter scores of evaluation episodes: the best and the last evaluation's, and the last
        one's step, episode count and success rates (empty when there is no Crafter evaluation)."""
        scores = self.stats.get("crafter_score")
        if not scores:
            return {}
        return {
            "best_eval_crafter_score": max(scores),
            "last_eval_crafter_score": scores[-1],
            "last_eval_step": self.stats["step"][-1],
            "last_eval_episodes": self.stats["episodes"][-1],
            "last_eval_success_rates": self.stats["success_rates"][-1],
        }


def eval_row(result: EvalResult, cfg: Config, step: int, set_name: str, checkpoint: str | None = None) -> dict:
    """One evaluation as a row of EvalStats: summary, published scores, every episode's return and length."""
    return score(result.summary(), cfg) | {
        "step": step,
        "checkpoint": checkpoint,
        "set": set_name,
        "returns": result.returns,
        "lengths": result.lengths,
    }
