"""PPO loss pieces on hand-computed values; one update lowers the loss on a fixed batch."""

import math
from types import SimpleNamespace

import pytest
import torch

import agent
from agent import PPO, explained_variance, ppo_loss
from buffer import RolloutBuffer
from config import Config
from policy import ActorCritic, PolicySpec


def test_ppo_loss_pieces_by_hand():
    cfg = Config(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, adv_norm="none", clip_vloss=False)
    old_logprob = torch.log(torch.tensor([0.5, 0.5]))
    new_logprob = torch.log(torch.tensor([0.75, 0.25]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    new_value, old_value, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0])
    entropy = torch.tensor([0.6, 0.4])
    loss, p = ppo_loss(new_logprob, entropy, new_value, old_logprob, old_value, adv, returns, cfg)
    # sample 0: ratio 1.5, A=1 -> min(1.5, 1.2) = 1.2 ; sample 1: ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8
    assert p["policy_loss"].item() == pytest.approx(-(1.2 - 0.8) / 2)
    assert p["value_loss"].item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)  # 0.5
    assert p["entropy"].item() == pytest.approx(0.5)
    assert p["clipfrac"].item() == pytest.approx(1.0)
    r = torch.tensor([1.5, 0.5])
    assert p["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item())
    assert loss.item() == pytest.approx(-0.2 - 0.01 * 0.5 + 0.5 * 0.5)


def test_value_clipping_by_hand():
    cfg = Config(clip_coef=0.2, clip_vloss=True, adv_norm="none")
    z = torch.zeros(1)
    # new value 1.0 moved 1.0 from old 0.0 -> clipped to 0.2; target 1.0: max((0)^2, (0.8)^2) = 0.64
    _, p = ppo_loss(z, z, torch.tensor([1.0]), z, z, z, torch.tensor([1.0]), cfg)
    assert p["value_loss"].item() == pytest.approx(0.5 * 0.64)


def test_advantage_normalization_is_per_minibatch():
    cfg = Config(adv_norm="minibatch", clip_coef=10.0, ent_coef=0.0, vf_coef=0.0)
    adv = torch.tensor([1.0, 2.0, 3.0])
    z = torch.zeros(3)
    _, p = ppo_loss(z, z, z, z, z, adv, z, cfg)  # ratio 1: loss = -mean(normalized adv) = 0
    assert p["policy_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_explained_variance():
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(t, t) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), t) == pytest.approx(0.0)
    assert math.isnan(explained_variance(t, torch.ones(4)))


def filled_buffer(policy, seed=0, cache_features=None):
    """A rollout of random frames; stores backbone features instead of frames when the policy caches them."""
    cache = policy.caches_features if cache_features is None else cache_features
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the sampled actions too
    T, N = 8, 4
    buf = RolloutBuffer(T, N, (3, 16, 16), torch.device("cpu"), policy.feature_dim if cache else None)
    for t in range(T):
        obs = torch.randint(0, 255, (N, 3, 16, 16), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            act = policy.act(obs)
        reward = torch.randn(N, generator=g)
        buf.add(
            t,
            act.features if cache else obs,
            act.action,
            act.logprob,
            act.value,
            reward,
            torch.zeros(N),
            torch.zeros(N),
        )
    buf.compute_advantages(torch.zeros(N), 0.99, 0.95)
    return buf


def full_batch_loss(policy, buf, cfg):
    mb = next(buf.minibatches(1))
    with torch.no_grad():
        features = mb.inputs if policy.caches_features else policy.features(mb.inputs)
        lp, ent, v = policy.evaluate_actions(features, mb.actions)
        return ppo_loss(lp, ent, v, mb.logprobs, mb.values, mb.advantages, mb.returns, cfg)[0].item()


def test_one_update_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = Config(lr=3e-4, update_epochs=4, num_minibatches=1, clip_coef=0.2, adv_norm="minibatch", clip_vloss=False)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32, freeze_backbone=False))
    buf = filled_buffer(policy)
    before = full_batch_loss(policy, buf, cfg)
    stats = PPO(policy, cfg).update(buf)
    after = full_batch_loss(policy, buf, cfg)
    assert after < before
    assert stats["epochs"] == 4 and stats["grad_norm"] > 0


def test_target_kl_stops_epochs_early():
    torch.manual_seed(0)
    cfg = Config(lr=1e-2, update_epochs=10, num_minibatches=2, target_kl=1e-6)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32, freeze_backbone=False))
    stats = PPO(policy, cfg).update(filled_buffer(policy))
    assert stats["epochs"] == 1


def test_frozen_backbone_is_not_updated():
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32, freeze_backbone=True))
    before = {k: v.clone() for k, v in policy.backbone.state_dict().items()}
    head_before = policy.policy_head[0].weight.clone()
    PPO(policy, Config(lr=1e-2, update_epochs=2, num_minibatches=2)).update(filled_buffer(policy))
    assert all(torch.equal(before[k], v) for k, v in policy.backbone.state_dict().items())
    assert not torch.equal(head_before, policy.policy_head[0].weight)


class RecomputingPolicy(ActorCritic):
    """A frozen-backbone policy that runs the backbone in every epoch instead of caching features."""

    @property
    def caches_features(self) -> bool:
        return False


def test_cached_feature_update_equals_recomputing_update():
    torch.manual_seed(0)
    spec = PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32, freeze_backbone=True)
    cached = ActorCritic(spec)
    recomputing = RecomputingPolicy(spec)
    recomputing.load_state_dict(cached.state_dict())
    cfg = Config(lr=1e-2, update_epochs=3, num_minibatches=4, adv_norm="minibatch", clip_vloss=True)
    stats_a = PPO(cached, cfg, seed=1).update(filled_buffer(cached, cache_features=True))
    stats_b = PPO(recomputing, cfg, seed=1).update(filled_buffer(recomputing, cache_features=False))
    assert filled_buffer(cached, cache_features=True).inputs.shape == (8, 4, cached.feature_dim)
    for (name, a), b in zip(cached.state_dict().items(), recomputing.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # same math in another operation order (features cached vs recomputed): equal to float32 precision
    assert stats_a["policy_loss"] == pytest.approx(stats_b["policy_loss"], rel=1e-4, abs=1e-6)


def test_ewma_normalizer_matches_moon_et_al_by_hand():
    from policy import EwmaNormalizer

    norm = EwmaNormalizer()
    norm.update(torch.tensor([1.0, 3.0]))  # mean 2, mean square 5
    norm.update(torch.tensor([4.0]))
    m, s, d = 0.99 * 0.01 * 2 + 0.01 * 4, 0.99 * 0.01 * 5 + 0.01 * 16, 0.99 * 0.01 + 0.01
    mean, std = norm.mean_std()
    assert mean.item() == pytest.approx(m / d)
    assert std.item() == pytest.approx(math.sqrt(max(s / d - (m / d) ** 2, 1e-2)))
    x = torch.tensor([0.5, 7.0])
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)


def test_value_normalization_trains_on_normalized_targets_and_acts_in_reward_units():
    torch.manual_seed(0)
    spec = PolicySpec(
        "impala_cnn", (3, 16, 16), 3, 5, head_hidden=0, freeze_backbone=False, trunk_hidden=32, value_norm=True
    )
    policy = ActorCritic(spec)
    policy.value_normalizer.update(torch.tensor([100.0, 140.0]))
    obs = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        act = policy.act(obs)
        _, _, head_value = policy.evaluate_actions(act.features, act.action)
    torch.testing.assert_close(act.value, policy.value_normalizer.denormalize(head_value))
    assert act.value.mean() > 50  # reward units, near the targets' mean of 120
    buf = filled_buffer(policy)
    cfg = Config(update_epochs=3, num_minibatches=4, clip_vloss=False)
    before = policy.value_normalizer.debiasing_term.item()
    PPO(policy, cfg).update(buf)
    assert policy.value_normalizer.debiasing_term.item() == pytest.approx(1 - (1 - before) * 0.99**12)  # per minibatch


def test_drac_value_regularizer_is_in_the_units_of_the_value_loss(monkeypatch):
    """With value_norm the value loss compares normalized values, and so does DrAC's G_V = 0.5 (V(f(s)) - V(s))^2:
    alpha_r then weighs it against the value loss as DrAC does, not sigma^2 times more."""
    torch.manual_seed(0)
    spec = PolicySpec(
        "impala_cnn", (3, 16, 16), 3, 5, head_hidden=0, freeze_backbone=False, trunk_hidden=32, value_norm=True
    )
    policy = ActorCritic(spec)
    normalizer = policy.value_normalizer
    normalizer.update(torch.tensor([100.0, 140.0]))  # mean 120, std 20
    frames = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    monkeypatch.setattr(agent, "augment", lambda frames, *args: frames.flip(3))  # f: a mirror image
    ppo = PPO(policy, Config(augment="crop"))
    mb = SimpleNamespace(inputs=frames, initial_state=None, starts=None)
    with torch.no_grad():
        logits, value = policy.minibatch_heads(policy.features(frames))  # normalized values
        _, aug_value = policy.minibatch_heads(policy.features(frames.flip(3)))
        _, value_reg = ppo.drac_regularizers(mb, logits, value)
    in_head_units = 0.5 * (aug_value - value).square().mean()
    in_return_units = 0.5 * (normalizer.denormalize(aug_value) - normalizer.denormalize(value)).square().mean()
    assert in_head_units > 0 and in_return_units.item() == pytest.approx(400 * in_head_units.item(), rel=1e-3)
    assert value_reg.item() == pytest.approx(in_head_units.item(), rel=1e-5)


def test_batch_advantage_normalization_is_over_the_whole_rollout():
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32, freeze_backbone=False))
    buf = filled_buffer(policy)
    returns = buf.returns.clone()
    PPO(policy, Config(adv_norm="batch", update_epochs=1, num_minibatches=2)).update(buf)
    assert buf.advantages.mean().abs() < 1e-6 and buf.advantages.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(buf.returns, returns)
