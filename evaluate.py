"""Score saved checkpoints: `python evaluate.py logs/run_1/best_model.pth [more checkpoints or logdirs]`.

Each checkpoint alone rebuilds its game and policy; episodes run on fresh evaluation envs and are
scored the way each benchmark publishes them: Crafter achievement success rates and score, Procgen
returns on training and unseen levels with normalized scores, Atari raw full-game returns with the
human-normalized score.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path


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


if __name__ == "__main__":  # --help and a mistyped flag are answered before torch, timm and wandb load (seconds)
    parse_args()

import numpy as np
import torch

from agent import explained_variance
from buffer import RewardScaler
from checkpoint import CheckpointError, atomic_write, load_checkpoint, resolve_checkpoint_path
from config import Config
from errors import UsageError
from evaluation import EvalResult, EvalStats, eval_row, make_eval_env, run_episodes
from hardware import resolve_device, resolve_precision
from policy import ActorCritic, PolicySpec
from vecenv import VecEnv
from visuals import LiveView, plot_value_analysis, write_video

# ------------------------------------------------------------------------------ checkpoints to games


TEST_LEVELS = (0, 0)  # Procgen's test set, as in the paper: the full level distribution (num_levels=0)


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


# ---------------------------------------------------------------------------------- value analysis


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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
