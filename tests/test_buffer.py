"""GAE against a straightforward per-episode reference, and the reward scalers."""

import numpy as np
import pytest
import torch

from buffer import RewardScaler, RolloutBuffer, RunningMeanStd, StackedFrames
from env import make_vec_env
from vecenv import FrameStack


def reference_gae(rewards, values, dones, bootstrap, last_values, gamma, lam):
    """Per env, walk each episode segment backwards with its own end value:
    0 after termination, V(final obs) after truncation, V(next obs) where the rollout is cut."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        end = T
        for start in [t + 1 for t in reversed(range(T)) if dones[t, n]] + [0]:
            if start >= end:
                continue
            last_t = end - 1
            cut_by_rollout = end == T and not dones[last_t, n]
            # 0 after termination, V(final) after truncation, V(next obs) where the rollout is cut
            next_v = last_values[n] if cut_by_rollout else bootstrap[last_t, n]
            gae = 0.0
            for t in reversed(range(start, end)):
                v_next = next_v if t == last_t else values[t + 1, n]
                delta = rewards[t, n] + gamma * v_next - values[t, n]
                gae = delta + gamma * lam * gae
                adv[t, n] = gae
            end = start
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_with_terminations_and_truncations(seed):
    rng = np.random.default_rng(seed)
    T, N, gamma, lam = 16, 5, 0.97, 0.9
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    terminated = rng.random((T, N)) < 0.15
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    truncated[T - 1, 0] = True  # a truncation at the very last step of the rollout
    terminated[3, 1] = True  # a termination mid-rollout
    dones = terminated | truncated
    bootstrap = np.where(truncated, rng.normal(size=(T, N)), 0.0)
    last_values = rng.normal(size=N)

    buf = RolloutBuffer(T, N, (1, 2, 2), torch.device("cpu"))
    for t in range(T):
        f = lambda x, t=t: torch.as_tensor(x[t], dtype=torch.float32)
        buf.add(
            t,
            torch.zeros(N, 1, 2, 2, dtype=torch.uint8),
            torch.zeros(N, dtype=torch.long),
            f(values) * 0,
            f(values),
            f(rewards),
            f(dones.astype(float)),
            f(bootstrap),
        )
    buf.compute_advantages(torch.as_tensor(last_values, dtype=torch.float32), gamma, lam)

    expected = reference_gae(rewards, values, dones, bootstrap, last_values, gamma, lam)
    np.testing.assert_allclose(buf.advantages.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(buf.returns.numpy(), expected + values, rtol=1e-4, atol=1e-5)


def test_gae_single_terminal_step_by_hand():
    buf = RolloutBuffer(2, 1, (1, 1, 1), torch.device("cpu"))
    z = torch.zeros(1)
    buf.add(0, torch.zeros(1, 1, 1, 1, dtype=torch.uint8), z.long(), z, torch.tensor([0.5]), torch.tensor([1.0]), z, z)
    buf.add(
        1,
        torch.zeros(1, 1, 1, 1, dtype=torch.uint8),
        z.long(),
        z,
        torch.tensor([0.2]),
        torch.tensor([2.0]),
        torch.ones(1),
        z,
    )
    buf.compute_advantages(torch.tensor([100.0]), gamma=0.5, gae_lambda=0.5)
    # step 1 terminated: delta1 = 2 - 0.2 = 1.8; step 0: delta0 = 1 + 0.5*0.2 - 0.5 = 0.6, A0 = 0.6 + 0.25*1.8
    assert buf.advantages[:, 0].tolist() == pytest.approx([0.6 + 0.25 * 1.8, 1.8])


def test_minibatches_cover_the_batch_once():
    buf = RolloutBuffer(4, 3, (1, 1, 1), torch.device("cpu"))
    buf.actions = torch.arange(12).reshape(4, 3)
    seen = torch.cat([mb.actions for mb in buf.minibatches(4, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(12))


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = [rng.normal(3, 2, size=s) for s in (5, 17, 40)]
    rms = RunningMeanStd()
    for d in data:
        rms.update(d)
    allx = np.concatenate(data)
    assert rms.mean == pytest.approx(allx.mean(), rel=1e-3)
    assert rms.var == pytest.approx(allx.var(), rel=1e-3)


def test_reward_scalers():
    r = np.array([-3.0, 0.0, 0.5])
    assert RewardScaler("sign", 3, 0.99)(r, np.zeros(3, bool)).tolist() == [-1.0, 0.0, 1.0]
    assert RewardScaler("none", 3, 0.99)(r, np.zeros(3, bool)).tolist() == [-3.0, 0.0, 0.5]
    norm = RewardScaler("normalize", 3, 0.99)
    for _ in range(200):
        out = norm(np.array([10.0, 10.0, 10.0]), np.zeros(3, bool))
    assert np.all(np.abs(out) < 10.0)  # divided by the running std of the discounted return


def stacks_round_trip(stacks: np.ndarray, frame_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """stacks (T, N, K*C, H, W) through StackedFrames -> (what it gives back, the stacks) in flat order."""
    T, N = stacks.shape[:2]
    store = StackedFrames(T, N, stacks.shape[2:], frame_channels, torch.device("cpu"))
    for t in range(T):
        store.add(t, torch.as_tensor(stacks[t]))
    store.check()  # as RolloutBuffer.compute_advantages does once per rollout
    index = torch.randperm(T * N)
    expected = torch.as_tensor(stacks).reshape(T * N, *stacks.shape[2:])[index]
    return store.gather(index), expected


@pytest.mark.parametrize("k", [2, 4])
def test_stacked_frames_give_back_every_stack(k):
    """Episodes ending at any step (also back to back and within the first K steps), black frames."""
    rng = np.random.default_rng(k)
    T, N, C = 40, 6, 3
    frames = FrameStack(N, (C, 5, 5), k)
    frames.reset(rng.integers(0, 255, (N, C, 5, 5), dtype=np.uint8))
    stacks = []
    for t in range(T):
        stacks.append(frames.stack.copy())
        new = rng.integers(0, 255, (N, C, 5, 5), dtype=np.uint8)
        new[rng.random(N) < 0.1] = 0  # a black frame is a frame, not padding
        ended = rng.random(N) < (0.5 if t in (3, 4) else 0.15)
        frames.step(new, rng.integers(0, 255, (N, C, 5, 5), dtype=np.uint8), ended)
    got, expected = stacks_round_trip(np.stack(stacks), C)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("env_id", ["crafter", "procgen/bigfish", "atari/Breakout"])
def test_stacked_frames_on_real_games(env_id):
    """Each family's stacks (Atari's from ALE itself, across lost lives too) are stored exactly."""
    with make_vec_env(env_id, 3, seed=1, history_length=4) as envs:
        obs, stacks, ends = envs.reset(), [], 0
        for _ in range(150):
            stacks.append(obs)
            result = envs.step(np.random.default_rng(len(stacks)).integers(0, envs.num_actions, 3))
            obs, ends = result.obs, ends + int((result.terminated | result.truncated).sum())
    got, expected = stacks_round_trip(np.stack(stacks), envs.frame_channels)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert ends > 0


def test_stacked_frames_refuse_stacks_that_are_not_zero_padded():
    stacks = np.random.default_rng(0).integers(1, 255, (4, 2, 6, 3, 3), dtype=np.uint8)  # unrelated stacks
    with pytest.raises(ValueError, match="zero padded"):
        stacks_round_trip(stacks, 3)
