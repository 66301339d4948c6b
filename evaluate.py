"""Score saved checkpoints: `python evaluate.py logs/run_1/best_model.pth` (or a logdir).

The checkpoint alone rebuilds the game and the policy; episodes run on fresh evaluation envs
(Procgen: unseen levels; Atari: full games with raw rewards).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from checkpoint import CheckpointError, load_checkpoint
from env import EpisodeStats, UsageError, VecEnv, make_vec_env, parse_env_id
from policy import ActorCritic, PolicySpec


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    achievements: list[dict[str, int]] = field(default_factory=list)  # Crafter only

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


def success_rates(achievements: list[dict[str, int]]) -> dict[str, float]:
    """Percent of episodes in which each achievement was unlocked at least once."""
    names = sorted({name for ep in achievements for name in ep})
    return {n: 100.0 * float(np.mean([ep.get(n, 0) > 0 for ep in achievements])) for n in names}


def crafter_score(rates: dict[str, float]) -> float:
    """Crafter score: exp(mean_i ln(1 + s_i)) - 1 over achievement success rates s_i in percent."""
    return math.exp(float(np.mean([math.log(1.0 + s) for s in rates.values()]))) - 1.0


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
) -> EvalResult:
    """Play `num_episodes` full episodes from a fresh reset and collect their raw returns. Actions are
    sampled from a generator seeded with `seed`, so evaluation never moves the training RNG."""
    generator = torch.Generator(device=device).manual_seed(seed)
    quotas = episode_quotas(num_episodes, envs.num_envs)
    done = np.zeros(envs.num_envs, dtype=np.int64)
    finished: list[EpisodeStats] = []
    was_training = policy.training
    policy.eval()
    obs = envs.reset()
    while (done < quotas).any():
        with torch.inference_mode():
            action = policy.act(torch.as_tensor(obs, device=device), deterministic, generator).action
        result = envs.step(action.cpu().numpy())
        for ep in result.episodes:
            if done[ep.env_index] < quotas[ep.env_index]:
                done[ep.env_index] += 1
                finished.append(ep)
        obs = result.obs
    policy.train(was_training)
    achievements = [ep.achievements for ep in finished if ep.achievements is not None]
    return EvalResult([ep.ret for ep in finished], [ep.length for ep in finished], achievements)


def make_eval_env(config: dict, num_envs: int, seed: int) -> VecEnv:
    """Evaluation envs for the game and settings a run was trained with (a checkpoint's config)."""
    return make_vec_env(
        config["env"],
        num_envs,
        seed,
        config["history_length"],
        evaluation=True,
        distribution_mode=config["distribution_mode"],
        start_level=config["start_level"],
        num_levels=config["num_levels"],
        repeat_action_probability=config["sticky_actions"],
    )


def load_policy(payload: dict, device: torch.device) -> ActorCritic:
    """Rebuild the policy of a loaded checkpoint (no pretrained download: the weights are inside)."""
    try:
        policy = ActorCritic(PolicySpec.from_dict(payload["policy_spec"])).to(device)
        policy.load_state_dict(payload["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint does not match its policy spec: {str(e).splitlines()[0][:200]}") from e
    return policy


def format_summary(name: str, summary: dict) -> str:
    lines = [
        f"{name}: {summary['episodes']} episodes  return {summary['mean_return']:.2f} +- {summary['std_return']:.2f}"
        f"  length {summary['mean_length']:.1f} +- {summary['std_length']:.1f}"
    ]
    if "crafter_score" in summary:
        lines.append(f"  crafter score {summary['crafter_score']:.2f}%")
        lines += [f"  {k:<22} {v:6.1f}%" for k, v in summary["success_rates"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .pth checkpoint or a logdir (uses its best_model.pth)")
    p.add_argument("--episodes", type=int, default=20, help="episodes to play (default 20)")
    p.add_argument("--num-envs", type=int, default=8, help="parallel eval envs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval envs (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--deterministic", action="store_true", help="argmax actions instead of sampling")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"unknown --device {name!r}") from e


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    args = parse_args(argv)
    try:
        if args.episodes < 1 or args.num_envs < 1:
            raise UsageError("--episodes and --num-envs must be at least 1")
        device = resolve_device(args.device)
        payload = load_checkpoint(args.checkpoint, map_location=device)
        config = payload["config"]
        parse_env_id(config["env"])
        policy = load_policy(payload, device)
        envs = make_eval_env(config, min(args.num_envs, args.episodes), args.seed)
    except UsageError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    start = time.time()
    with envs:
        result = run_episodes(policy, envs, args.episodes, device, args.deterministic)
    summary = result.summary() | {
        "checkpoint": str(args.checkpoint),
        "env": config["env"],
        "global_step": payload["global_step"],
        "deterministic": args.deterministic,
        "seconds": round(time.time() - start, 1),
    }
    print(format_summary(f"{config['env']} @ step {payload['global_step']:,}", summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
