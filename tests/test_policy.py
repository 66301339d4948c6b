"""timm registry entries, pretrained loading from a local file, freezing and input normalization."""

import pytest
import timm
import torch

from env import UsageError
from policy import ActorCritic, PolicySpec, create_backbone, input_normalization


@pytest.mark.parametrize(
    "name,shape", [("nature_cnn", (4, 84, 84)), ("impala_cnn", (12, 64, 64)), ("impala_cnn_wide", (3, 64, 64))]
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
    loaded = create_backbone("impala_cnn", 3, pretrained=True, pretrained_file=str(path))
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # a 4-frame RGB stack adapts the 3-channel first conv, as timm does for in_chans != 3
    stacked = create_backbone("impala_cnn", 12, pretrained=True, pretrained_file=str(path))
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
    action, logprob, value, features = policy.act(obs)
    assert action.shape == logprob.shape == value.shape == (3,) and features.shape == (3, policy.feature_dim)
    policy.train()
    assert not policy.backbone.training  # frozen BatchNorm statistics stay frozen
    assert all(not p.requires_grad for p in policy.backbone.parameters())


def test_missing_pretrained_weights_warn_and_fall_back(recwarn):
    backbone = create_backbone("nature_cnn", 4, pretrained=True)
    assert isinstance(backbone, torch.nn.Module)
    assert any("no pretrained weights for nature_cnn" in str(w.message) for w in recwarn)


def test_bad_backbone_inputs():
    with pytest.raises(UsageError, match="unknown backbone"):
        create_backbone("not_a_net", 3, pretrained=False)
    with pytest.raises(UsageError, match="not found"):
        create_backbone("impala_cnn", 3, pretrained=True, pretrained_file="/nonexistent.pth")


def test_deterministic_act_is_argmax():
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, 32))
    obs = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    action = policy.act(obs, deterministic=True).action
    logits, _ = policy(obs)
    assert torch.equal(action, logits.argmax(-1))
