"""DrAC: each of auto-drac's eight augmentations against hand-computed examples, one draw per sample (or env sequence)
for all its frames, a PPO loss that never sees augmented frames, regularizers that vanish for the identity, clean
evaluation; UCB-DrAC's arms in auto-drac's order, its bandit against hand-computed bounds, and its state through a
checkpoint."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from toy_env import GridGoalVecEnv

import agent
from augment import (
    BOX_MAX,
    BOX_MIN,
    BOX_PIVOT,
    COLOUR_AUGMENTATIONS,
    GRAY_WEIGHTS,
    JITTER_HIGH,
    JITTER_LOW,
    TRANSFORMS,
    UcbSelector,
    augment,
    color_jitter,
    crop,
    cutout,
    cutout_color,
    flip,
    grayscale,
    hsv_to_rgb,
    jitter,
    random_conv,
    rgb_to_hsv,
    rotate,
)
from checkpoint import load_checkpoint
from config import Config, parse_flags
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


def test_rotate_turns_each_sample_by_its_quarter_turns():
    frame = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    turned = {0: [[1, 2], [3, 4]], 1: [[2, 4], [1, 3]], 2: [[4, 3], [2, 1]], 3: [[3, 1], [4, 2]]}  # counter-clockwise
    seen = set()
    for seed in range(20):
        k = torch.randint(0, 4, (1,), generator=gen(seed)).item()  # the draw rotate makes
        out = rotate(frame, gen(seed), groups=1)
        assert out.dtype == torch.uint8 and out[0, 0].tolist() == turned[k]
        seen.add(k)
    assert seen == {0, 1, 2, 3}


def test_cutout_blacks_out_a_box_below_and_right_of_the_pivot():
    assert (BOX_MIN, BOX_MAX, BOX_PIVOT) == (7, 22, (12, 24))  # auto-drac's Cutout and CutoutColor defaults
    frames = torch.full((1, 6, 6, 6), 9, dtype=torch.uint8)  # two RGB frames, 6x6
    # box (2, 2): rows [0 + 2, 0 + 4), columns [1 + 2, 1 + 4)
    out = cutout(frames, gen(0), groups=1, box=(2, 3), pivot=(0, 1))
    rows = [9, 9, 9, 9, 9, 9]
    assert out[0, 0].tolist() == [rows, rows, [9, 9, 9, 0, 0, 9], [9, 9, 9, 0, 0, 9], rows, rows]
    assert torch.equal(out[:, 1:], out[:, :1].expand(-1, 5, -1, -1))  # every channel of every frame
    edge = cutout(frames, gen(0), groups=1, box=(2, 3), pivot=(0, 3))  # columns [5, 7): cut at the edge
    assert edge[0, 0, 2].tolist() == [9, 9, 9, 9, 9, 0]
    for seed in range(10):  # sizes (height, width) drawn in [box[0], box[1])
        height, width = torch.randint(1, 4, (1, 2), generator=gen(seed))[0].tolist()
        zeroed = (cutout(frames, gen(seed), groups=1, box=(1, 4), pivot=(0, 0))[0, 0] == 0).nonzero()
        assert zeroed.tolist() == [[r, c] for r in range(height, 2 * height) for c in range(width, 2 * width)]


def test_cutout_color_fills_the_box_with_one_colour_per_sample():
    frames = torch.full((1, 6, 6, 6), 9, dtype=torch.uint8)  # two RGB frames
    g = gen(2)
    torch.randint(2, 3, (1, 2), generator=g)  # the box's size, then its colour: the draws cutout_color makes
    colour = torch.randint(0, 255, (1, 3), generator=g)[0].tolist()
    out = cutout_color(frames, gen(2), groups=1, frame_channels=3, box=(2, 3), pivot=(0, 1))
    assert out.dtype == torch.uint8
    for channel in range(6):
        fill = colour[channel % 3]
        row = [9, 9, 9, fill, fill, 9]
        assert out[0, channel, 2:4].tolist() == [row, row] and (out[0, channel, :2] == 9).all()


def test_rgb_to_hsv_and_back_by_hand():
    rgb = torch.tensor([[0.6, 0.3, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.2, 0.4, 0.8]]).T[None, :, :, None]
    hsv = rgb_to_hsv(rgb)[0, :, :, 0].T  # (4 pixels, 3)
    # (0.6, 0.3, 0): max red, hue (0.3 / 0.6) / 6 = 1/12; black: all 0; grey: blue's formula (0 + 4) / 6, S 0;
    # (0.2, 0.4, 0.8): max blue, hue ((0.2 - 0.4) / 0.6 + 4) / 6 = 11/18, S 0.6 / 0.8
    expected = [[1 / 12, 1.0, 0.6], [0.0, 0.0, 0.0], [4 / 6, 0.0, 0.5], [11 / 18, 0.75, 0.8]]
    torch.testing.assert_close(hsv, torch.tensor(expected), atol=1e-6, rtol=0)
    sectors = torch.tensor([[6, 3, 0], [3, 6, 0], [0, 6, 3], [0, 3, 6], [3, 0, 6], [6, 0, 3]]) / 10  # hues 30, 90, ...
    for pixels in (rgb, sectors.T[None, :, :, None]):
        torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(pixels)), pixels, atol=1e-6, rtol=0)
    full_turn = torch.tensor([1.0, 1.0, 0.8]).view(1, 3, 1, 1)  # hue 360 degrees: in none of auto-drac's sectors
    assert hsv_to_rgb(full_turn).flatten().tolist() == [0.0, 0.0, 0.0]


def test_jitter_by_hand():
    pixel = torch.tensor([0.6, 0.3, 0.0]).view(1, 3, 1, 1)  # H 30 degrees, S 1, V 0.6
    hue_sixth = 360 / 255 / 6  # a hue factor that turns the hue by 1/6 (factor * 255 / 360 of a turn)
    factors = torch.tensor([[1.25, 0.5, 0.5, hue_sixth]])  # brightness, contrast, saturation, hue
    # V 0.75, H 90 degrees, S 0.5: c = 0.375, x = c (1 - |1.5 mod 2 - 1|) = 0.1875, m = 0.375; the sector
    # [60, 120) is (x, c, 0) + m. Contrast over a one-pixel image changes nothing.
    for contrast_first in (True, False):
        out = jitter(pixel, factors, contrast_first)
        torch.testing.assert_close(out.flatten(), torch.tensor([0.5625, 0.75, 0.375]), atol=1e-6, rtol=0)
    greys = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2).expand(1, 3, 1, 2)  # two grey pixels
    factors = torch.tensor([[1.4, 0.5, 1.0, 0.0]])
    # contrast first: about the mean 0.5 -> 0.35, 0.65; then brightness 1.4 -> 0.49, 0.91
    # brightness first: 0.28, 1.12 clamped to 1; then contrast about their mean 0.64 -> 0.46, 0.82
    for contrast_first, expected in ((True, [0.49, 0.91]), (False, [0.46, 0.82])):
        out = jitter(greys, factors, contrast_first)
        torch.testing.assert_close(out, torch.tensor(expected).expand(1, 3, 1, 2), atol=1e-6, rtol=0)


def test_color_jitter_draws_its_factors_per_sample_and_its_order_per_call():
    assert (JITTER_LOW, JITTER_HIGH) == ((0.6, 0.6, 0.6, -0.5), (1.4, 1.4, 1.4, 0.5))  # auto-drac: 0.4, 0.4, 0.4, 0.5
    frames = stacks(batch=3, k=2, size=5)
    orders = set()
    for seed in range(8):
        g = gen(seed)  # the draws color_jitter makes: factors (groups, 4), then the order
        factors = torch.tensor(JITTER_LOW) + torch.tensor([0.8, 0.8, 0.8, 1.0]) * torch.rand(3, 4, generator=g)
        contrast_first = torch.rand((), generator=g).item() >= 0.5
        out = color_jitter(frames, gen(seed), groups=3, frame_channels=3)
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
        for i in range(3):
            for j in range(2):
                rgb = frames[i : i + 1, 3 * j : 3 * j + 3].float() / 255
                expected = jitter(rgb, factors[i : i + 1], contrast_first) * 255
                torch.testing.assert_close(out[i : i + 1, 3 * j : 3 * j + 3], expected, atol=1e-4, rtol=0)
        orders.add(contrast_first)
    assert orders == {True, False}


@pytest.mark.parametrize("kind", ["crop", "flip", "rotate"])
def test_all_frames_of_a_stack_move_together(kind):
    frames = stacks()
    out = augment(frames, kind, gen(1), frame_channels=3)
    assert out.shape == frames.shape and not torch.equal(out, frames)
    for j in range(1, 4):  # frame j - frame 0 stays 10 * j everywhere: the same transform for the whole stack
        assert torch.all(out[:, 3 * j : 3 * j + 3].int() - out[:, :3].int() == 10 * j)


@pytest.mark.parametrize("kind", [t for t in TRANSFORMS if t != "grayscale"])
def test_recurrent_minibatches_draw_once_per_env_sequence(kind):
    """Time-major samples b and b + n belong to env b % n: the same draw along each sequence."""
    frames = stacks(batch=1, size=64).expand(8, -1, -1, -1)  # one stack at 4 steps of 2 envs; 64x64: cutout's box
    out = augment(frames, kind, gen(5), frame_channels=3, groups=2)
    assert all(torch.equal(out[b], out[b % 2]) for b in range(8))
    assert not torch.equal(out[0], out[1])  # two envs, two draws (this seed's flips and turns differ)


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
    assert trainer.evaluate()
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


@pytest.mark.parametrize("kind", COLOUR_AUGMENTATIONS)
def test_colour_augmentations_need_rgb_frames(kind, tmp_path):
    cfg = small_config(tmp_path / "run_1", augment=kind, env="atari/Breakout", history_length=2)
    with pytest.raises(UsageError, match="needs RGB frames"):
        Trainer(cfg)


def test_every_transform_is_a_flag_and_regularizes_an_update(tmp_path):
    cfg = small_config(tmp_path / "run_1")
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0), eval_envs=GridGoalVecEnv(2, seed=1))
    assert trainer.train_one_update()
    mb = next(iter(trainer.buffer.minibatches(1, gen(0))))
    policy, ppo = trainer.policy, trainer.ppo
    for kind in TRANSFORMS:
        assert parse_flags(["--augment", kind])["augment"] == kind
        ppo.augmentation = kind
        with torch.no_grad():
            logits, value = policy.minibatch_heads(policy.features(mb.inputs))
            assert all(torch.isfinite(r) for r in ppo.drac_regularizers(mb, logits, value))
    trainer.close()


def test_ucb_arms_are_auto_drac_s_transforms_in_its_order():
    # auto-drac train.py's aug_to_func: crop, random-conv, grayscale, flip, rotate, cutout, cutout-color, color-jitter
    auto_drac = ("crop", "random_conv", "grayscale", "flip", "rotate", "cutout", "cutout_color", "color_jitter")
    assert auto_drac == TRANSFORMS
    assert UcbSelector(TRANSFORMS).select() == "crop"  # the first arm of equal bounds


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
    assert trainer.ppo.ucb.arms == ("crop", "flip", "rotate", "cutout")
    trainer.close()
