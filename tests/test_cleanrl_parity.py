"""The atari-cleanrl preset computes CleanRL's update: same network, same data, same weights afterwards."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from agent import PPO
from buffer import RolloutBuffer
from config import config_from_args
from policy import ActorCritic, PolicySpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import baselines  # noqa: E402

T, N, A = 16, 4, 4


def test_one_update_matches_cleanrl_ppo_atari():
    torch.manual_seed(0)
    cfg = config_from_args(["--preset", "atari-cleanrl", "--update-epochs", "2", "--num-minibatches", "1",
                            "--num-steps", str(T), "--num-envs", str(N)])  # fmt: skip
    envs = SimpleNamespace(single_action_space=SimpleNamespace(n=A))
    theirs = baselines.AtariAgent(envs)
    ours = ActorCritic(
        PolicySpec("nature_cnn", (4, 84, 84), 1, A, head_hidden=0, freeze_backbone=False, feature_norm=False)
    )
    mapping = {"backbone.convs.0": "network.0", "backbone.convs.2": "network.2", "backbone.convs.4": "network.4",
               "backbone.fc": "network.7", "policy_head": "actor", "value_head": "critic"}  # fmt: skip
    theirs_state = theirs.state_dict()
    ours.load_state_dict({k: theirs_state[f"{mapping[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}"]
                          for k in ours.state_dict()})  # fmt: skip

    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 255, (T, N, 4, 84, 84), dtype=torch.uint8, generator=g)
    next_obs = torch.randint(0, 255, (N, 4, 84, 84), dtype=torch.uint8, generator=g)
    actions = torch.randint(0, A, (T, N), generator=g)
    rewards = torch.sign(torch.randn(T, N, generator=g)) * (torch.rand(T, N, generator=g) < 0.2)
    ended = torch.rand(T, N, generator=g) < 0.05  # episode ended at step t
    with torch.no_grad():
        _, logprobs, _, values = theirs.get_action_and_value(obs.flatten(0, 1).float(), actions.flatten())
    logprobs, values = logprobs.view(T, N), values.view(T, N)

    # CleanRL's convention: dones[t] = obs t starts an episode; next_done for the obs after the rollout
    dones = torch.cat([torch.zeros(1, N), ended[:-1].float()])
    optimizer = torch.optim.Adam(theirs.parameters(), lr=cfg.lr, eps=1e-5)
    np.random.seed(0)
    baselines.cleanrl_update(
        theirs, optimizer, next_obs.float(), ended[-1].float(), obs.float(), logprobs, actions.float(), rewards,
        dones, values, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, batch_size=T * N, minibatch_size=T * N,
        update_epochs=cfg.update_epochs, clip_coef=cfg.clip_coef, norm_adv=True, clip_vloss=cfg.clip_vloss,
        ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, target_kl=None,
    )  # fmt: skip

    buffer = RolloutBuffer(T, N, (4, 84, 84), torch.device("cpu"), frame_channels=1)
    buffer.inputs = obs  # whole stacks (random frames are no real stacks)
    buffer.actions, buffer.logprobs, buffer.values = actions, logprobs, values
    buffer.rewards, buffer.dones = rewards, ended.float()
    with torch.no_grad():
        buffer.compute_advantages(ours.value(next_obs), cfg.gamma, cfg.gae_lambda)
    PPO(ours, cfg).update(buffer)

    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        torch.testing.assert_close(value, theirs_state[f"{mapping[prefix]}.{leaf}"], atol=1e-5, rtol=1e-4, msg=key)
