"""timm registry entries, pretrained loading from a local file, freezing and input normalization."""

import math

import pytest
import timm
import torch

from errors import UsageError
from policy import ActorCritic, PolicySpec, create_backbone, gumbel_max_sample, input_normalization


@pytest.mark.parametrize(
    "name,shape", [("nature_cnn", (4, 84, 84)), ("impala_cnn", (12, 64, 64)), ("impala_cnn_moon", (3, 64, 64))]
)
def test_pixel_cnns_are_timm_models(name, shape):
    assert timm.is_model(name)
    model = timm.create_model(name, in_chans=shape[0], num_classes=0)
    out = model(torch.zeros(2, *shape))
    assert out.shape == (2, model.num_features)


def test_nature_cnn_has_the_published_shape():
    model = timm.create_model("nature_cnn", in_chans=4)
    model(torch.zeros(1, 4, 84, 84))
    assert model.fc.weight.shape == (512, 64 * 7 * 7)


def test_local_pretrained_file_is_loaded(tmp_path):
    src = timm.create_model("impala_cnn", in_chans=3)
    src(torch.zeros(1, 3, 64, 64))
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    loaded, was_loaded = create_backbone("impala_cnn", 3, pretrained=True, pretrained_file=str(path))
    assert was_loaded
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # a 4-frame RGB stack adapts the 3-channel first conv, as timm does for in_chans != 3
    stacked, _ = create_backbone("impala_cnn", 12, pretrained=True, pretrained_file=str(path))
    assert stacked.stages[0].conv.weight.shape[1] == 12


def test_timm_backbone_in_actor_critic(tmp_path):
    torch.manual_seed(0)
    spec = PolicySpec("resnet10t", (12, 64, 64), 3, 17, head_hidden=32, freeze_backbone=True)
    policy = ActorCritic(spec)
    mean, std = input_normalization(policy.backbone, 12, 3)
    assert mean.shape == (1, 12, 1, 1)  # ImageNet mean tiled over the 4 stacked frames
    assert torch.allclose(mean[0, 3:6, 0, 0], torch.tensor((0.485, 0.456, 0.406)))
    obs = torch.randint(0, 255, (3, 12, 64, 64), dtype=torch.uint8)
    normalized = torch.addcmul(policy.pixel_shift, obs.float(), policy.pixel_scale)
    assert torch.allclose(normalized, (obs.float() / 255 - mean) / std, atol=1e-5)
    action, logprob, value, features, _ = policy.act(obs)
    assert action.shape == logprob.shape == value.shape == (3,) and features.shape == (3, policy.feature_dim)
    policy.train()
    assert not policy.backbone.training  # frozen BatchNorm statistics stay frozen
    assert all(not p.requires_grad for p in policy.backbone.parameters())


def test_missing_pretrained_weights_warn_and_fall_back(recwarn):
    backbone, loaded = create_backbone("nature_cnn", 4, pretrained=True)
    assert isinstance(backbone, torch.nn.Module) and not loaded
    assert any("no pretrained weights for nature_cnn" in str(w.message) for w in recwarn)


def test_bad_backbone_inputs():
    with pytest.raises(UsageError, match="unknown backbone .*impala_cnn_moon_half"):
        create_backbone("not_a_net", 3, pretrained=False)
    with pytest.raises(UsageError, match="not found"):
        create_backbone("impala_cnn", 3, pretrained=True, pretrained_file="/nonexistent.pth")


def test_deterministic_act_is_argmax():
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=32))
    obs = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    action = policy.act(obs, deterministic=True).action
    logits, _ = policy(obs)
    assert torch.equal(action, logits.argmax(-1))


# ------------------------------------------------------------------ what stops or slows learning


def crafter_obs(n: int = 16, k: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3 * k, 64, 64), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    "backbone,frozen",
    [("tf_efficientnetv2_s", True), ("resnet10t", False), ("nature_cnn", False), ("impala_cnn", False)],
)
def test_fresh_policy_is_near_uniform_with_unit_scale_features_and_small_values(backbone, frozen):
    """Without pretrained weights a frozen EfficientNetV2-S gave features ~5e3, logits std ~80 and an entropy of
    0.004 nats: the heads must see unit-scale features, start near-uniform and predict O(1) values."""
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec(backbone, (12, 64, 64), 3, 17, head_hidden=256, freeze_backbone=frozen))
    obs = crafter_obs()
    with torch.no_grad():
        features = policy.features(obs)
        latent = policy.feature_norm(features)
        logits, value = policy(obs)
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    assert entropy.min() >= 0.95 * math.log(17)
    assert latent.std() == pytest.approx(1.0, rel=0.05) and latent.mean().abs() < 0.05
    assert value.abs().max() < 5.0


@pytest.mark.parametrize("backbone", ["resnet10t", "tf_efficientnet_lite0"])
def test_batchnorm_backbone_gives_ratio_one_before_the_first_step(backbone):
    """The rollout runs the policy in eval mode and the update in train mode: BatchNorm must compute the same
    function in both, or every sample starts outside PPO's clip range."""
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec(backbone, (12, 64, 64), 3, 17, head_hidden=64, freeze_backbone=False))
    obs = crafter_obs(8)
    policy.eval()
    with torch.no_grad():
        act = policy.act(obs)
    policy.train()
    with torch.no_grad():
        logprob, _, value = policy.evaluate_actions(policy.features(obs), act.action)
    torch.testing.assert_close((logprob - act.logprob).exp(), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(value, act.value, atol=1e-5, rtol=1e-5)
    assert policy.training and not policy.backbone.training


def test_bf16_keeps_the_heads_in_float32():
    """--precision bf16 autocasts the backbone only: the heads' outputs are float32 computations, not bf16 roundings."""
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 64, 64), 3, 17, head_hidden=64, freeze_backbone=False))
    policy.value_head[-1].bias.data.fill_(20.23)  # bf16 would round it to 20.25
    policy.precision = "bf16"
    obs = crafter_obs(4, k=1)
    with torch.no_grad():
        logits, value = policy(obs)
        latent = policy.trunk(policy.feature_norm(policy.features(obs)))
        assert torch.equal(value, policy.value_head(latent).squeeze(-1))
        assert torch.equal(logits, policy.policy_head(latent))


def row_norms(layer: torch.nn.Module) -> torch.Tensor:
    return layer.weight.flatten(1).norm(dim=1)


def test_nature_cnn_dense_layer_has_cleanrl_init():
    model = timm.create_model("nature_cnn", in_chans=4)
    model(torch.zeros(1, 4, 84, 84))
    torch.testing.assert_close(row_norms(model.fc), torch.full((512,), math.sqrt(2)), atol=1e-4, rtol=0)
    assert torch.count_nonzero(model.fc.bias) == 0


def test_frozen_backbone_without_weights_is_reported():
    policy = ActorCritic(PolicySpec("nature_cnn", (4, 84, 84), 1, 6), pretrained=False)
    assert policy.pretrained_loaded is False


def test_image_size_resizes_frames_before_the_backbone():
    policy = ActorCritic(PolicySpec("resnet10t", (3, 64, 64), 3, 17, head_hidden=0, image_size=96))
    seen = []
    policy.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    policy.act(crafter_obs(2, k=1))
    assert seen == [(2, 3, 96, 96)]


def test_gumbel_max_sampling_draws_the_policy_distribution():
    """The GPU rollout samples by Gumbel-max (no host-device syncs): same distribution as multinomial."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.2])
    draws = gumbel_max_sample(logits.expand(400_000, 5))
    frequencies = torch.bincount(draws, minlength=5) / len(draws)
    torch.testing.assert_close(frequencies, logits.softmax(-1), atol=3e-3, rtol=0)  # ~4 standard errors


@pytest.mark.parametrize("backbone", ["impala_cnn", "resnet10t"])  # resnet10t: BatchNorm, kept in eval mode
def test_backbone_in_chunks_gives_the_whole_batch_features_and_gradients(backbone):
    torch.manual_seed(0)
    spec = PolicySpec(backbone, (3, 64, 64), 3, 15, head_hidden=0, freeze_backbone=False)
    policy = ActorCritic(spec).train()
    obs = torch.randint(0, 255, (300, 3, 64, 64), dtype=torch.uint8)
    weights = torch.randn(300, policy.feature_dim)
    calls = []
    policy.backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))

    def features_and_grads(chunk: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        policy.cpu_chunk = chunk
        policy.zero_grad()
        features = policy.features(obs)
        (features * weights).sum().backward()
        return features.detach(), [p.grad.clone() for p in policy.backbone.parameters()]

    whole, whole_grads = features_and_grads(0)
    chunked, chunked_grads = features_and_grads(128)
    assert calls == [300, 128, 128, 44]
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_feature_level_needs_a_backbone_with_levels_and_one_it_has():
    with pytest.raises(UsageError, match="nature_cnn has no feature levels"):
        create_backbone("nature_cnn", 3, pretrained=False, feature_level=0)
    with pytest.raises(UsageError, match="feature levels 0 to 4"):
        create_backbone("resnet10t", 3, pretrained=False, feature_level=5)


def test_feature_level_features_are_the_flattened_map_and_are_cached_when_frozen():
    torch.manual_seed(0)
    spec = PolicySpec("resnet10t", (3, 64, 64), 3, 17, head_hidden=0, freeze_backbone=True, feature_level=1)
    policy = ActorCritic(spec)
    assert policy.feature_dim == 64 * 16 * 16  # resnet10t's level 1: 64 channels at stride 4
    assert policy.caches_features
    obs = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    rebuilt = ActorCritic(PolicySpec.from_dict(spec.to_dict()))  # what a checkpoint rebuilds
    rebuilt.load_state_dict(policy.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.features(obs), policy.features(obs))
