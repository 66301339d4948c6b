"""PPO must actually solve a tiny pixel game, through the same rollout and update code train.py runs."""

import time

import numpy as np
import torch
from toy_env import GridGoalVecEnv

from agent import PPO
from buffer import RewardScaler
from evaluate import run_episodes
from policy import ActorCritic, PolicySpec
from train import Config, collect_rollout, learning_rate, make_buffer


def train_on_grid(cfg: Config, seed: int = 0) -> float:
    """Train on the grid game for cfg.steps; -> success rate of 200 greedy-free (sampled) test episodes."""
    torch.manual_seed(seed)
    envs = GridGoalVecEnv(cfg.num_envs, seed=seed)
    spec = PolicySpec(cfg.backbone, envs.obs_shape, 3, envs.num_actions, cfg.head_hidden, cfg.freeze_backbone)
    policy = ActorCritic(spec)
    ppo = PPO(policy, cfg, seed=seed)
    buffer = make_buffer(cfg, policy, envs, torch.device("cpu"))
    scaler = RewardScaler("none", cfg.num_envs, cfg.gamma)
    timing = {"env": 0.0, "inference": 0.0}
    obs = envs.reset()
    for update in range(cfg.num_updates):
        ppo.set_lr(learning_rate(cfg, update / cfg.num_updates))
        obs, _, _ = collect_rollout(envs, policy, buffer, obs, scaler, timing)
        with torch.no_grad():
            last_values = policy.value(torch.as_tensor(obs))
        buffer.compute_advantages(last_values, cfg.gamma, cfg.gae_lambda)
        ppo.update(buffer)
    result = run_episodes(policy, GridGoalVecEnv(20, seed=seed + 1), 200, torch.device("cpu"))
    return float(np.mean(result.returns))


def grid_config(**overrides) -> Config:
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
        steps=24_000,
    )
    return Config(**(base | overrides))


def test_ppo_solves_grid_goal():
    start = time.time()
    success = train_on_grid(grid_config())
    print(f"success rate {success:.2f} after {time.time() - start:.0f}s")
    assert success > 0.9  # random play succeeds ~24% of the time
