"""PPO must actually solve a tiny pixel game, through the same Trainer and update that train.py runs."""

import time

import numpy as np
import torch
from toy_env import GridGoalVecEnv

from config import Config
from evaluation import run_episodes
from train import Trainer


def train_on_grid(cfg: Config, seed: int = 0) -> float:
    """Train on the grid game for cfg.steps; -> mean return (success rate) of 200 sampled test episodes."""
    trainer = Trainer(cfg, envs=GridGoalVecEnv(cfg.num_envs, seed=seed), eval_envs=GridGoalVecEnv(4, seed=seed + 2))
    trainer.run()
    result = run_episodes(trainer.policy, GridGoalVecEnv(20, seed=seed + 1), 200, torch.device("cpu"))
    return float(np.mean(result.returns))


def grid_config(logdir, **overrides) -> Config:
    base = dict(
        backbone="impala_cnn",
        pretrained=False,
        freeze_backbone=False,
        head_hidden=64,
        num_envs=16,
        num_steps=32,
        num_minibatches=4,
        update_epochs=4,
        lr=1e-3,
        gamma=0.9,
        steps=40_000,  # at 24,000 seeds 0, 2 (fp32) and 4 (bf16) of 0-5 fell short of 0.9; at 40,000 all three solve it
        seed=0,
        eval_interval=40_000,
        eval_episodes=4,
        eval_video=False,
        wandb_mode="disabled",
        logdir=str(logdir),
    )
    return Config(**(base | overrides))


def test_ppo_solves_grid_goal(tmp_path):
    start = time.time()
    success = train_on_grid(grid_config(tmp_path / "run_1"))
    print(f"success rate {success:.2f} after {time.time() - start:.0f}s")
    assert success > 0.9  # random play succeeds ~24% of the time
