"""Augmentation: one random offset per sample for all its frames; the rollout and evaluation never augmented."""

import pytest
import torch
from toy_env import GridGoalVecEnv

import agent
from augment import augment, random_crop, random_shift
from config import Config
from train import Trainer


def stacks(batch: int = 16, k: int = 4, size: int = 12) -> torch.Tensor:
    """(B, K*3, H, W) uint8 stacks whose frame j is frame 0 plus 10 * j: alignment shows in the differences."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 200, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    return torch.cat([base + 10 * j for j in range(k)], dim=1)


@pytest.mark.parametrize("transform", [random_shift, random_crop])
def test_all_frames_of_a_stack_move_together(transform):
    frames = stacks()
    out = transform(frames, torch.Generator().manual_seed(1))
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert not torch.equal(out, frames)
    for j in range(1, 4):  # frame j - frame 0 stays 10 * j everywhere: the same window for the whole stack
        diff = out[:, 3 * j : 3 * j + 3].int() - out[:, :3].int()
        assert torch.all((diff - 10 * j).abs() <= 1)  # crop's bilinear rounding: at most one grey level


def test_shift_is_a_window_of_the_border_padded_frame():
    frames = stacks(batch=64, k=1)
    out = random_shift(frames, torch.Generator().manual_seed(2), pad=4)
    padded = torch.nn.functional.pad(frames.float(), (4, 4, 4, 4), mode="replicate")
    for i in range(len(frames)):  # each output is one of the 81 windows of its padded frame
        windows = padded[i].unfold(1, 12, 1).unfold(2, 12, 1)  # (C, 9, 9, 12, 12)
        assert (windows == out[i].float()[:, None, None]).flatten(3).all(3).all(0).any()


def test_update_sees_augmented_frames_and_evaluation_does_not(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(agent, "augment", lambda frames, kind, g: calls.append(kind) or augment(frames, kind, g))
    cfg = Config(
        backbone="impala_cnn", pretrained=False, freeze_backbone=True, head_hidden=16, num_envs=4, num_steps=8,
        num_minibatches=2, update_epochs=1, steps=32, seed=0, eval_interval=32, eval_episodes=2, eval_video=False,
        wandb_mode="disabled", logdir=str(tmp_path / "run_1"), augment="shift",
    )  # fmt: skip
    with pytest.warns(UserWarning, match="no longer cached"):
        trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert not trainer.policy.caches_features and trainer.buffer.inputs.dtype == torch.uint8
    assert trainer.train_one_update()
    assert calls == ["shift", "shift"]  # one per minibatch of the update
    trainer.maybe_evaluate()
    assert calls == ["shift", "shift"]  # evaluation plays on clean frames
    trainer.close()
