"""DrAC: each augmentation against hand-computed examples, one draw per sample (or env sequence) for all its frames,
a PPO loss that never sees augmented frames, regularizers that vanish for the identity, clean evaluation; UCB-DrAC's
bandit against hand-computed bounds, and its state through a checkpoint."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from toy_env import GridGoalVecEnv

import agent
from augment import GRAY_WEIGHTS, TRANSFORMS, UcbSelector, augment, crop, flip, grayscale, random_conv
from checkpoint import load_checkpoint
from config import Config
from errors import UsageError
from train import Trainer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stacks(batch: int = 16, k: int = 4, size: int = 12) -> torch.Tensor:
    """(B, K*3, H, W) uint8 stacks whose frame j is frame 0 plus 10 * j: alignment shows in the differences."""
    base = torch.randint(0, 200, (batch, 3, size, size), generator=gen(0), dtype=torch.uint8)
    return torch.cat([base + 10 * j for j in range(k)], dim=1)


def test_crop_is_a_window_of_the_replicate_padded_frame():
    frame = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    # padded by 1: rows [1 1 2 2], [1 1 2 2], [3 3 4 4], [3 3 4 4]; the 2x2 window at each (top, left):
    windows = {
        (0, 0): [[1, 1], [1, 1]], (0, 1): [[1, 2], [1, 2]], (0, 2): [[2, 2], [2, 2]],
        (1, 0): [[1, 1], [3, 3]], (1, 1): [[1, 2], [3, 4]], (1, 2): [[2, 2], [4, 4]],
        (2, 0): [[3, 3], [3, 3]], (2, 1): [[3, 4], [3, 4]], (2, 2): [[4, 4], [4, 4]],
    }  # fmt: skip
    seen = set()
    for seed in range(40):
        top, left = torch.randint(0, 3, (1, 2), generator=gen(seed))[0].tolist()  # the draw crop makes
        out = crop(frame, gen(seed), groups=1, pad=1)
        assert out.dtype == torch.uint8 and out[0, 0].tolist() == windows[top, left]
        seen.add((top, left))
    assert len(seen) == 9  # every shift in [-pad, pad]^2 occurs


def test_grayscale_is_the_luma_in_every_channel():
    frames = torch.tensor([100, 50, 200, 0, 0, 255], dtype=torch.uint8).view(1, 6, 1, 1)  # two RGB frames, 1 pixel
    assert GRAY_WEIGHTS == (0.299, 0.587, 0.114)
    # 0.299 * 100 + 0.587 * 50 + 0.114 * 200 = 82.05 -> 82; 0.114 * 255 = 29.07 -> 29
    assert grayscale(frames, 3).flatten().tolist() == [82, 82, 82, 29, 29, 29]


def test_flip_turns_chosen_samples_upside_down():
    frames = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).expand(4, 3, 2, 2)
    assert flip(frames, gen(0), groups=4, p=1.0)[:, :, 0].tolist() == [[[3, 4]] * 3] * 4
    assert torch.equal(flip(frames, gen(0), groups=4, p=0.0), frames)
    chosen = torch.rand(4, generator=gen(3)) < 0.5  # the draw flip makes
    out = flip(frames, gen(3), groups=4)
    assert [out[i, 0, 0, 0].item() == 3 for i in range(4)] == chosen.tolist()


def test_random_conv_convolves_each_sample_with_its_own_kernel():
    frames = stacks(batch=3, k=2, size=5)
    out = random_conv(frames, gen(4), groups=3, frame_channels=3)
    kernels = torch.randn(3, 3, 3, 3, 3, generator=gen(4)) * (2 / 54) ** 0.5  # DrAC: xavier normal, fan 27 + 27
    for i in range(3):
        for j in range(2):
            expected = F.conv2d(frames[i : i + 1, 3 * j : 3 * j + 3].float(), kernels[i], padding=1)
            torch.testing.assert_close(out[i : i + 1, 3 * j : 3 * j + 3], expected, atol=1e-4, rtol=1e-5)  # pixel scale
    assert out.dtype == torch.float32 and (out < 0).any()  # unclamped, as DrAC's


@pytest.mark.parametrize("kind", ["crop", "flip"])
def test_all_frames_of_a_stack_move_together(kind):
    frames = stacks()
    out = augment(frames, kind, gen(1), frame_channels=3)
    assert out.shape == frames.shape and not torch.equal(out, frames)
    for j in range(1, 4):  # frame j - frame 0 stays 10 * j everywhere: the same transform for the whole stack
        assert torch.all(out[:, 3 * j : 3 * j + 3].int() - out[:, :3].int() == 10 * j)


@pytest.mark.parametrize("kind", ["crop", "flip", "random_conv"])
def test_recurrent_minibatches_draw_once_per_env_sequence(kind):
    """Time-major samples b and b + n belong to env b % n: the same draw along each sequence."""
    frames = stacks(batch=1).expand(8, -1, -1, -1)  # one stack at 4 steps of 2 envs
    out = augment(frames, kind, gen(5), frame_channels=3, groups=2)
    assert all(torch.equal(out[b], out[b % 2]) for b in range(8))
    assert not torch.equal(out[0], out[1]) or kind == "flip"  # two envs, two draws (a flip may coincide)


def small_config(logdir, **overrides) -> Config:
    base = dict(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=16, num_envs=4, num_steps=8,
        num_minibatches=2, update_epochs=1, steps=32, seed=0, eval_interval=32, eval_episodes=2, eval_video=False,
        wandb_mode="disabled", logdir=str(logdir), augment="crop", precision="fp32",
        value_norm=False,  # the PPO loss then compares values in reward units, the rollout's
    )  # fmt: skip
    return Config(**(base | overrides))


@pytest.mark.parametrize("recurrent", ["none", "gru"])
def test_the_ppo_loss_sees_clean_frames_and_starts_at_ratio_one(recurrent, tmp_path, monkeypatch):
    seen = []
    real_loss, real_augment = agent.ppo_loss, agent.augment
    monkeypatch.setattr(agent, "ppo_loss", lambda *args: seen.append(args[:5]) or real_loss(*args))
    monkeypatch.setattr(agent, "augment", lambda *args: seen.append("augment") or real_augment(*args))
    cfg = small_config(tmp_path / "run_1", recurrent=recurrent, recurrent_size=8)
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert trainer.train_one_update()
    new_logprob, _, new_value, old_logprob, old_value = seen[0]
    # the rollout's, up to float rounding: the update's batch may take other CPU kernels than the rollout's
    torch.testing.assert_close(new_logprob, old_logprob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_value, old_value, atol=1e-5, rtol=1e-5)
    assert seen[1] == "augment" and seen.count("augment") == 2  # the regularizers, once per minibatch
    trainer.maybe_evaluate()
    assert seen.count("augment") == 2  # evaluation plays on clean frames
    trainer.close()


def test_regularizers_vanish_for_the_identity_and_not_for_crop(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "run_1")
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert trainer.train_one_update()
    mb = next(iter(trainer.buffer.minibatches(1, gen(0))))
    policy, ppo = trainer.policy, trainer.ppo
    with torch.no_grad():
        logits, value = policy.minibatch_heads(policy.features(mb.inputs))
        crop_regs = ppo.drac_regularizers(mb, logits, value)
        monkeypatch.setattr(agent, "augment", lambda frames, *args: frames)
        identity_regs = ppo.drac_regularizers(mb, logits, value)
    assert [r.item() for r in identity_regs] == [0.0, 0.0]
    assert all(r.item() > 0 for r in crop_regs)
    trainer.close()


def test_colour_augmentations_need_rgb_frames(tmp_path):
    cfg = small_config(tmp_path / "run_1", augment="grayscale", env="atari/Breakout", history_length=2)
    with pytest.raises(UsageError, match="needs RGB frames"):
        Trainer(cfg)


def test_ucb_picks_the_highest_upper_confidence_bound_as_auto_drac_does():
    ucb = UcbSelector(("crop", "grayscale", "flip"))  # c = 0.1 (their runs'); counts 1, N 1, Q 0
    assert ucb.select() == "crop"  # every bound is 0 (ln 1): the first
    ucb.record(0.1)  # crop: Q 0.1, n 2, N 2 -> 0.1 + 0.1 sqrt(ln 2 / 2) = 0.159 against 0.1 sqrt(ln 2) = 0.083
    assert ucb.select() == "crop"  # (with their class's unused default c = 0.5: 0.394 against 0.416, grayscale)
    ucb.record(-1.0)  # crop: Q -0.45, n 3, N 3 -> -0.45 + 0.1 sqrt(ln 3 / 3) = -0.39 against 0.1 sqrt(ln 3) = 0.105
    assert ucb.select() == "grayscale"


def test_ucb_values_average_the_returns_of_the_last_window():
    ucb = UcbSelector(("crop",), window=3)
    for mean_return in (100.0, 1.0, 2.0, 3.0):
        ucb.select()
        ucb.record(mean_return)
    assert ucb.value(0) == 2.0 and ucb.counts == [5] and ucb.total == 5


def test_ucb_drac_picks_a_transform_per_update_and_its_bandit_survives_a_checkpoint(tmp_path):
    cfg = small_config(tmp_path / "run_1", augment="ucb", steps=96)
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert trainer.ppo.ucb.arms == TRANSFORMS  # RGB frames: every transform
    returns = []
    for _ in range(3):
        assert trainer.train_one_update()
        returns.append(trainer.buffer.returns.mean().item())
    ucb = trainer.ppo.ucb
    assert ucb.total == 3 and sum(ucb.counts) == len(TRANSFORMS) + 2  # outcomes of the first two updates
    assert sum(ucb.returns, []) == pytest.approx(returns[1:])  # each update's outcome: the next rollout's returns
    assert trainer.ppo.augmentation == ucb.arms[ucb.current]
    before, bandit = trainer.ppo.state(), ucb.state_dict()
    trainer.ppo.update(trainer.buffer)  # as a stop signal mid-update: the update is undone, the bandit too
    assert ucb.state_dict() != bandit
    trainer.ppo.load_state(before)
    assert ucb.state_dict() == bandit
    assert trainer.save("last.pth", with_env_state=False)
    trainer.close()
    resumed_cfg = dataclasses.replace(cfg, resume=str(tmp_path / "run_1" / "last.pth"))
    payload = load_checkpoint(tmp_path / "run_1" / "last.pth")
    resumed = Trainer(resumed_cfg, payload, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert resumed.ppo.ucb.state_dict() == ucb.state_dict()
    resumed.close()


def test_ucb_on_grey_frames_chooses_among_the_transforms_for_them(tmp_path):
    cfg = small_config(tmp_path / "run_1", augment="ucb", env="atari/Breakout", history_length=2)
    trainer = Trainer(cfg)
    assert trainer.ppo.ucb.arms == ("crop", "flip")
    trainer.close()
