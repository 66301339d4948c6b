"""Recurrent PPO: the update replays the rollout's sequences exactly, and memory solves what frames can't."""

import numpy as np
import pytest
import torch
from toy_env import CueMemoryVecEnv, GridGoalVecEnv

from buffer import RolloutBuffer
from config import Config
from evaluation import run_episodes
from rollout import collect_rollout
from train import Trainer


def small_config(logdir, **overrides) -> Config:
    base = dict(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=32, num_envs=4, num_steps=16,
        num_minibatches=2, update_epochs=2, lr=1e-3, gamma=0.9, steps=128, seed=0, eval_interval=10**9,
        eval_episodes=4, eval_video=False, wandb_mode="disabled", logdir=str(logdir), recurrent="gru",
        recurrent_size=16, value_norm=False,  # evaluate_actions' values then are the rollout's, in reward units
    )  # fmt: skip
    return Config(**(base | overrides))


@pytest.mark.parametrize("recurrent", ["gru", "lstm"])
@pytest.mark.parametrize("frozen", [False, True])
def test_first_epoch_replays_the_rollout_across_episode_boundaries(recurrent, frozen, tmp_path):
    """Before any gradient step, the update's log-probs and values of whole env sequences (re-run from the
    stored start state, zeroed where episodes start) equal the rollout's, also in a rollout that starts
    mid-episode with a non-zero state."""
    cfg = small_config(tmp_path / "run_1", recurrent=recurrent, freeze_backbone=frozen)
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0, limit=5), eval_envs=GridGoalVecEnv(2, seed=1))
    for _ in range(2):  # the second rollout continues the first one's episodes and states
        args = (trainer.scaler, trainer.state.timing, trainer.to_device)
        trainer.obs, trainer.memory, _, _ = collect_rollout(
            trainer.envs, trainer.policy, trainer.buffer, trainer.obs, trainer.memory, *args
        )
    buffer = trainer.buffer
    assert buffer.starts[1:].any() and buffer.initial_state.abs().sum() > 0
    trainer.policy.train()
    with torch.no_grad():
        for mb in buffer.minibatches(cfg.num_minibatches, torch.Generator().manual_seed(0)):
            features = trainer.ppo.minibatch_features(mb.inputs)
            logprob, _, value = trainer.policy.evaluate_actions(features, mb.actions, mb.initial_state, mb.starts)
            torch.testing.assert_close(logprob, mb.logprobs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(value, mb.values, atol=1e-5, rtol=1e-5)
    trainer.close()


def test_minibatches_are_whole_env_sequences():
    num_minibatches = 2
    buffer = RolloutBuffer(5, 4, (3, 8, 8), torch.device("cpu"), feature_dim=2, state_size=3)
    buffer.inputs = torch.arange(20.0).view(5, 4, 1).expand(5, 4, 2).clone()  # value = t * N + env
    buffer.initial_state = torch.arange(12.0).view(4, 3)
    seen = []
    for mb in buffer.minibatches(num_minibatches):
        envs = mb.inputs[: 4 // num_minibatches, 0].long()  # step 0 of each env of the minibatch
        expected = (torch.arange(5)[:, None] * 4 + envs[None, :]).flatten().float()
        assert torch.equal(mb.inputs[:, 0], expected)  # time-major, whole sequences
        assert torch.equal(mb.initial_state, buffer.initial_state[envs])
        seen += envs.tolist()
    assert sorted(seen) == [0, 1, 2, 3]


def memory_task_success(tmp_path, recurrent: str, seed: int = 0) -> float:
    cfg = Config(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=0, num_envs=16, num_steps=20,
        num_minibatches=4, update_epochs=4, lr=2e-3, gamma=0.9, steps=16 * 20 * 40, seed=seed, eval_interval=10**9,
        eval_episodes=4, eval_video=False, wandb_mode="disabled", logdir=str(tmp_path / f"{recurrent}_{seed + 1}"),
        recurrent=recurrent, recurrent_size=32, lr_schedule="constant", ent_coef=0.01,
    )  # fmt: skip
    trainer = Trainer(cfg, envs=CueMemoryVecEnv(16, seed=seed), eval_envs=CueMemoryVecEnv(4, seed=seed + 2))
    trainer.run()
    test_envs = CueMemoryVecEnv(20, seed=seed + 1)
    result = run_episodes(trainer.policy, test_envs, 200, torch.device("cpu"), deterministic=True)
    return float(np.mean(result.returns))


def test_memory_task_needs_a_recurrent_policy(tmp_path):
    """The cue is only in an episode's first frame: feed-forward stays at chance, a GRU solves it. A GRU run now
    and then stays at chance too (3 of 8 runs of seeds 0-3 in fp32 and bf16 on an Intel Xeon; twice the steps did
    not help), so the GRU gets up to three seeds and must solve the task in one of them."""
    assert memory_task_success(tmp_path, "none") < 0.65
    assert any(memory_task_success(tmp_path, "gru", seed) > 0.95 for seed in range(3))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_core_state_is_zeroed_where_episodes_start(kind):
    from policy import RecurrentCore

    torch.manual_seed(0)
    core = RecurrentCore(kind, 5, 8)
    x, state = torch.randn(6, 3, 5), torch.randn(3, core.state_size)
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[2, 1] = starts[4, 0] = True
    with torch.no_grad():
        out, final = core(x, state, starts)
        fresh, _ = core(x[2:, 1:2], core.initial_state(1), torch.zeros(4, 1, dtype=torch.bool))
        whole, _ = core(x[:, 2:], state[2:], torch.zeros(6, 1, dtype=torch.bool))  # no start: one plain run
    torch.testing.assert_close(out[2:, 1:2], fresh)
    torch.testing.assert_close(out[:, 2:], whole)
    assert final.shape == state.shape
