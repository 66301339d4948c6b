"""Score saved checkpoints: `python evaluate.py logs/run_1/best_model.pth [more checkpoints or logdirs]`.

Each checkpoint alone rebuilds its game and policy; episodes run on fresh evaluation envs and are
scored the way each benchmark publishes them: Crafter achievement success rates and score, Procgen
returns on training and unseen levels with normalized scores, Atari raw full-game returns with the
human-normalized score.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agent import explained_variance
from buffer import RewardScaler
from checkpoint import CheckpointError, atomic_write, load_checkpoint, resolve_checkpoint_path
from config import Config, resolve_device, resolve_precision
from env import make_vec_env, parse_env_id
from errors import UsageError
from policy import ActorCritic, PolicySpec
from scores import atari_human_normalized, crafter_score, procgen_normalized, success_rates
from vecenv import EpisodeStats, VecEnv
from visuals import LiveView, plot_value_analysis, write_video

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


# ------------------------------------------------------------------------------ checkpoints to games


def validation_levels(cfg: Config) -> tuple[int, int]:
    """Procgen levels that pick `best_model.pth` during training: the block right after the training range
    (with unlimited training levels, the full distribution). Never the test levels below."""
    if cfg.num_levels == 0:
        return 0, 0
    return cfg.start_level + cfg.num_levels, VALIDATION_LEVELS


TEST_LEVELS = (0, 0)  # Procgen's test set, as in the paper: the full level distribution (num_levels=0)


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


def level_sets(cfg: Config, levels: str) -> dict[str, tuple[int, int] | None]:
    """The level sets to score: Procgen's training levels and its test levels; one set elsewhere."""
    if cfg.family != "procgen":
        return {"eval": None}
    return {"train": (cfg.start_level, cfg.num_levels), "test": parse_levels(levels)}


def parse_levels(text: str) -> tuple[int, int]:
    if not text:
        return TEST_LEVELS
    try:
        start, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--levels {text!r}: expected START:COUNT, e.g. 0:0 (all levels) or 1200:1000") from None
    if start < 0 or count < 0:
        raise UsageError("--levels START:COUNT must be >= 0")
    return start, count


def load_policy(payload: dict, device: torch.device) -> ActorCritic:
    """Rebuild the policy of a loaded checkpoint (no pretrained download: the weights are inside)."""
    try:
        policy = ActorCritic(PolicySpec.from_dict(payload["policy_spec"])).to(device)
        policy.load_state_dict(payload["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint does not match its policy spec: {str(e).splitlines()[0][:200]}") from e
    return policy


def check_game_matches(policy: ActorCritic, envs: VecEnv, path: Path) -> None:
    spec = policy.spec
    if (spec.num_actions, tuple(spec.obs_shape)) != (envs.num_actions, tuple(envs.obs_shape)):
        raise CheckpointError(
            f"{path} holds a policy for {spec.num_actions} actions and observations {tuple(spec.obs_shape)}, but "
            f"its game gives {envs.num_actions} and {tuple(envs.obs_shape)}"
        )


# ---------------------------------------------------------------------------------------- scoring


def training_reward_transform(cfg: Config, payload: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The reward transform the value function was trained on (sign clipping, return normalization with the
    run's statistics at the checkpoint)."""
    scaler = RewardScaler(cfg.reward_mode, 1, cfg.gamma)
    if "resume" in payload:
        scaler.load_state_dict(payload["resume"]["ranks"][0]["reward_scaler"] | {"discounted": [0.0]})
    return scaler.scale


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1}, G = 0 after the episode's last step."""
    out = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def value_analysis(result: EvalResult, cfg: Config, payload: dict) -> tuple[list[np.ndarray], float]:
    """Realized discounted returns of the played episodes (in training reward units) and the explained
    variance of the predicted values."""
    transform = training_reward_transform(cfg, payload)
    returns = [discounted_returns(transform(r), cfg.gamma) for r in result.rewards]
    g, v = np.concatenate(returns), np.concatenate(result.values)
    return returns, explained_variance(torch.from_numpy(v), torch.from_numpy(g))


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


def eval_row(result: EvalResult, cfg: Config, step: int, set_name: str, checkpoint: str | None = None) -> dict:
    """One evaluation as a row of EvalStats: summary, published scores, every episode's return and length."""
    return score(result.summary(), cfg) | {
        "step": step,
        "checkpoint": checkpoint,
        "set": set_name,
        "returns": result.returns,
        "lengths": result.lengths,
    }


# -------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help=".pth checkpoints or logdirs (a logdir means its best_model.pth)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per checkpoint and level set (default 20)")
    p.add_argument("--num-envs", type=int, default=8, help="parallel eval envs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval envs and sampled actions (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--deterministic", action="store_true", help="argmax actions instead of sampling")
    p.add_argument(
        "--levels", default="", help="Procgen test levels as START:COUNT (default 0:0, the full distribution)"
    )
    p.add_argument("--record", action="store_true", help="write a video of one episode per checkpoint and set")
    p.add_argument("--video-frames", type=int, default=3000, help="longest recorded video in frames (default 3000)")
    p.add_argument("--render", action="store_true", help="show env 0 in a window while playing (needs a display)")
    p.add_argument("--analyze-value", action="store_true", help="plot predicted value against realized return")
    p.add_argument("--out", default="", help="output folder (default: <logdir of the first checkpoint>/evaluation)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def progress_bar(total: int, desc: str):
    """A tqdm bar on an interactive terminal; silent in logs."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def evaluate_checkpoint(path: Path, args: argparse.Namespace, device: torch.device, out: Path, viewer) -> list[dict]:
    """Score one checkpoint on each of its level sets; -> one row per set."""
    payload = load_checkpoint(path)  # on the host: only the policy's weights go to the device
    cfg = Config.from_checkpoint(payload["config"], str(path))
    policy = load_policy(payload, device)
    policy.precision = resolve_precision(cfg.precision, device)  # the run's arithmetic, as it resolves here
    rows = []
    for set_name, levels in level_sets(cfg, args.levels).items():
        with make_eval_env(cfg, min(args.num_envs, args.episodes), args.seed, levels) as envs:
            check_game_matches(policy, envs, path)
            start = time.time()
            with progress_bar(args.episodes, f"{path.name} {set_name}") as bar:

                def on_step(n_finished: int, envs: VecEnv) -> None:
                    bar.update(n_finished - bar.n)
                    if viewer is not None:
                        viewer.show(envs.render(0))

                result = run_episodes(
                    policy,
                    envs,
                    args.episodes,
                    device,
                    args.deterministic,
                    args.seed,
                    args.video_frames if args.record else 0,
                    args.analyze_value,
                    on_step,
                )
        row = eval_row(result, cfg, payload["global_step"], set_name, str(path)) | {
            "env": cfg.env,
            "levels": list(levels) if levels else None,
            "deterministic": args.deterministic,
            "seconds": round(time.time() - start, 1),
        }
        stem = f"{path.parent.name}_{path.stem}_{set_name}"
        if args.record:
            row["video"] = str(write_video(result.frames, out / f"{stem}.mp4"))
        if args.analyze_value:
            returns, ev = value_analysis(result, cfg, payload)
            row["value_explained_variance"] = ev
            row["value_plot"] = str(
                plot_value_analysis(
                    result.values,
                    returns,
                    ev,
                    out / f"{stem}_value.png",
                    f"{cfg.env} @ {payload['global_step']:,}",
                )
            )
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per checkpoint and level set; Crafter rows are followed by their achievement rates."""
    header = f"{'checkpoint':<40} {'step':>11} {'set':<6} {'eps':>4} {'return':>17} {'length':>9} {'normalized':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        norm = r.get("normalized_return", r.get("human_normalized"))
        ret = f"{r['mean_return']:.2f} +- {r['std_return']:.2f}"
        lines.append(
            f"{r['checkpoint'][-40:]:<40} {r['step']:>11,} {r['set']:<6} {r['episodes']:>4} {ret:>17} "
            f"{r['mean_length']:>9.1f} {'' if norm is None else f'{norm:.3f}':>10}"
        )
        if "crafter_score" in r:
            lines.append(f"  crafter score {r['crafter_score']:.2f}%   success rates:")
            lines += [f"    {k:<22} {v:6.1f}%" for k, v in r["success_rates"].items()]
    by_checkpoint: dict[str, dict] = {}
    for r in rows:
        by_checkpoint.setdefault(r["checkpoint"], {})[r["set"]] = r["mean_return"]
    for name, sets in by_checkpoint.items():
        if "train" in sets and "test" in sets:
            lines.append(f"generalization gap (train - test) of {name}: {sets['train'] - sets['test']:.2f}")
    return "\n".join(lines)


def write_results(rows: list[dict], out: Path) -> None:
    """results.json (every row in full) and eval_stats.pkl / .json (EvalStats: one entry per checkpoint and set)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", lambda f: f.write(json.dumps(rows, indent=2).encode()))
    stats = EvalStats(out)
    for row in rows:
        stats.add(row)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    args = parse_args(argv)
    viewer = None
    try:
        if args.episodes < 1 or args.num_envs < 1 or args.video_frames < 1:
            raise UsageError("--episodes, --num-envs and --video-frames must be at least 1")
        device = resolve_device(args.device)
        paths = [resolve_checkpoint_path(p) for p in args.checkpoints]
        out = Path(args.out) if args.out else paths[0].parent / "evaluation"
        viewer = LiveView("pixelppo") if args.render else None
        rows = [row for path in paths for row in evaluate_checkpoint(path, args, device, out, viewer)]
    except UsageError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    finally:
        if viewer is not None:
            viewer.close()
    print(format_table(rows))
    write_results(rows, out)
    if args.json:
        Path(args.json).write_text(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
