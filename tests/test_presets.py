"""The presets are their sources' recipes: settings and networks point by point (see configs/*.yaml)."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml

from agent import PPO
from config import (
    CONFIG_DIR,
    RUN_FILE_HEADER,
    Config,
    config_from_args,
    preset_names,
    read_run_file,
    resumed_config,
)
from policy import MoonImpalaCNN
from train import build_policy


def preset_policy(name: str, obs_shape, frame_channels: int, num_actions: int) -> tuple:
    cfg = config_from_args(["--preset", name])
    envs = SimpleNamespace(obs_shape=obs_shape, frame_channels=frame_channels, num_actions=num_actions)
    torch.manual_seed(0)
    return cfg, build_policy(cfg, envs, torch.device("cpu"), "fp32", load_pretrained=False, warn=False)


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().flatten(1).norm(dim=1)


def test_crafter_moon_is_moon_et_al():
    cfg, policy = preset_policy("crafter-moon", (3, 64, 64), 3, 17)
    settings = (cfg.num_envs, cfg.num_steps, cfg.steps, cfg.update_epochs, cfg.num_minibatches, cfg.lr,
                cfg.lr_schedule, cfg.gamma, cfg.gae_lambda, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef,
                cfg.max_grad_norm, cfg.adv_norm, cfg.reward_scaling, cfg.history_length)  # fmt: skip
    assert settings == (8, 512, 1_024_000, 3, 8, 3e-4, "constant", 0.95, 0.65, 0.2, False, 0.01, 0.5, "batch",
                        "none", 1)  # fmt: skip
    assert cfg.vf_coef * 0.5 == 0.5  # their loss: pi + 0.5 * mse(normalized value, normalized target)
    assert PPO(policy, cfg).optimizer.defaults["eps"] == 1e-8
    backbone = policy.backbone
    assert isinstance(backbone, MoonImpalaCNN) and backbone.num_features == 256
    stages = list(backbone.stages)
    assert [s.conv.conv.out_channels for s in stages] == [64, 128, 128]
    assert stages[0].conv.conv.bias is not None and isinstance(stages[0].conv.norm, torch.nn.Identity)
    assert all(isinstance(s.conv.norm, torch.nn.GroupNorm) and s.conv.norm.num_groups == 1 for s in stages[1:])
    assert all(s.post_pool_norm.num_groups == 1 for s in stages)
    block_conv = stages[1].blocks[0][0].conv
    assert block_conv.bias is None
    torch.testing.assert_close(row_norms(block_conv.weight), torch.full((128,), (1 / 6) ** 0.25), atol=1e-5, rtol=0)
    torch.testing.assert_close(row_norms(stages[2].conv.conv.weight), torch.ones(128), atol=1e-5, rtol=0)
    assert backbone.dense_norm.normalized_shape == (128 * 8 * 8,) and backbone.fc.bias is None
    torch.testing.assert_close(row_norms(backbone.fc.weight), torch.full((256,), 1.4), atol=1e-5, rtol=0)
    assert isinstance(policy.feature_norm, torch.nn.LayerNorm) and policy.feature_norm.normalized_shape == (256,)
    trunk = policy.trunk[0]
    assert (trunk.in_features, trunk.out_features, trunk.bias) == (256, 1024, None)
    torch.testing.assert_close(row_norms(trunk.weight), torch.ones(1024), atol=1e-5, rtol=0)
    assert policy.policy_head.weight.shape == (17, 1024) and policy.value_head.weight.shape == (1, 1024)
    assert row_norms(policy.value_head.weight).item() == pytest.approx(0.1, abs=1e-5)
    assert policy.value_normalizer is not None


def test_procgen_official_is_train_procgen():
    cfg, policy = preset_policy("procgen-official", (3, 64, 64), 3, 15)
    settings = (cfg.num_envs, cfg.num_steps, cfg.update_epochs, cfg.num_minibatches, cfg.lr, cfg.lr_schedule,
                cfg.gamma, cfg.gae_lambda, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef, cfg.vf_coef,
                cfg.max_grad_norm, cfg.adv_norm, cfg.adam_eps, cfg.reward_mode, cfg.reward_norm_gamma,
                cfg.history_length, cfg.distribution_mode, cfg.num_levels)  # fmt: skip
    assert settings == (64, 256, 3, 8, 5e-4, "constant", 0.999, 0.95, 0.2, True, 0.01, 0.5, 0.5, "minibatch",
                        1e-5, "normalize", 0.99, 1, "easy", 200)  # fmt: skip
    assert [s.conv.out_channels for s in policy.backbone.stages] == [16, 32, 32]
    assert policy.backbone.fc.out_features == 256 and policy.backbone.fc.in_features == 32 * 8 * 8
    assert isinstance(policy.feature_norm, torch.nn.Identity) and isinstance(policy.trunk, torch.nn.Identity)
    assert policy.policy_head.weight.shape == (15, 256)
    assert row_norms(policy.policy_head.weight).max().item() == pytest.approx(0.01, abs=1e-5)
    assert row_norms(policy.value_head.weight).item() == pytest.approx(1.0, abs=1e-5)
    conv = policy.backbone.stages[0].blocks[0].conv0
    bound = math.sqrt(6 / (9 * 16 + 9 * 16))  # glorot uniform
    assert conv.weight.abs().max() <= bound and torch.count_nonzero(conv.bias) == 0


def test_atari_cleanrl_is_cleanrl():
    cfg, policy = preset_policy("atari-cleanrl", (4, 84, 84), 1, 4)
    settings = (cfg.num_envs, cfg.num_steps, cfg.steps, cfg.update_epochs, cfg.num_minibatches, cfg.lr,
                cfg.lr_schedule, cfg.gamma, cfg.gae_lambda, cfg.clip_coef, cfg.clip_vloss, cfg.ent_coef,
                cfg.vf_coef, cfg.max_grad_norm, cfg.adv_norm, cfg.adam_eps, cfg.reward_mode, cfg.history_length,
                cfg.episodic_life, cfg.sticky_actions)  # fmt: skip
    assert settings == (8, 128, 10_000_000, 4, 4, 2.5e-4, "linear", 0.99, 0.95, 0.1, True, 0.01, 0.5, 0.5,
                        "minibatch", 1e-5, "sign", 4, True, 0.0)  # fmt: skip
    assert isinstance(policy.feature_norm, torch.nn.Identity)
    convs = [m for m in policy.backbone.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    for layer in (*convs, policy.backbone.fc):
        expected = math.sqrt(2) if layer.weight.flatten(1).shape[0] <= layer.weight.flatten(1).shape[1] else None
        if expected:
            torch.testing.assert_close(row_norms(layer.weight), torch.full_like(row_norms(layer.weight), expected))
    assert policy.policy_head.weight.shape == (4, 512)
    assert row_norms(policy.value_head.weight).item() == pytest.approx(1.0, abs=1e-5)


def test_crafter_cpu_is_crafter_moon_on_the_nature_cnn():
    """The CPU recipe measured at 10.9% (bench/results/crafter-1024k.json, system crafter_moon_nature_cnn):
    every setting of crafter-moon but the backbone."""
    moon, cpu = config_from_args(["--preset", "crafter-moon"]), config_from_args(["--preset", "crafter-cpu"])
    differ = {k for k, v in vars(moon).items() if getattr(cpu, k) != v}
    assert differ == {"preset", "backbone"} and cpu.backbone == "nature_cnn"
    measured = config_from_args(["--preset", "crafter-moon", "--backbone", "nature_cnn"])
    assert {k for k, v in vars(measured).items() if getattr(cpu, k) != v} == {"preset"}


def test_the_default_run_is_crafter_cpu_on_a_cpu_and_crafter_moon_on_a_gpu(monkeypatch):
    """The best Crafter recipe measured that the machine runs in minutes: crafter-moon (17.0% at 1M) where a GPU
    makes its wide IMPALA CNN affordable, crafter-cpu (10.9%, the same settings on the Nature CNN) on a CPU, named
    as such in config.yaml. --config keeps Config's defaults; a flag still wins over the recipe."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU, also on a machine with a GPU
    on_cpu = config_from_args([])
    assert on_cpu == config_from_args(["--preset", "crafter-cpu"]) and on_cpu.run_file_dict()["preset"] == "crafter-cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config_from_args([]) == config_from_args(["--preset", "crafter-moon"])
    assert config_from_args(["--device", "cuda:0"]).backbone == "impala_cnn_moon"
    assert config_from_args(["--backbone", "nature_cnn"]).backbone == "nature_cnn"
    assert config_from_args(["--device", "cpu"]) == config_from_args(["--device", "cpu", "--preset", "crafter-cpu"])
    from_file = config_from_args(["--config", str(CONFIG_DIR / "default.yaml")])
    assert (from_file.preset, from_file.backbone) == ("", "nature_cnn")


@pytest.mark.parametrize(
    ("env", "recipe", "settings"),
    [
        ("procgen/coinrun", "procgen-official", {"gamma": 0.999, "gae_lambda": 0.95, "backbone": "impala_cnn"}),
        ("atari/Breakout", "atari-cleanrl", {"gamma": 0.99, "lr_schedule": "linear", "history_length": 4}),
        ("ALE/Pong-v5", "atari-cleanrl", {"clip_coef": 0.1, "num_steps": 128, "feature_norm": False}),
    ],
)
def test_other_games_start_from_their_published_recipe(env, recipe, settings):
    """Not from Crafter's: the run names its recipe (start line, config.yaml), and flags still win over it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning pointing to a recipe the run did not take
        cfg = config_from_args(["--env", env])
    assert cfg == config_from_args(["--preset", recipe, "--env", env]) and cfg.preset == recipe
    assert {k: getattr(cfg, k) for k in settings} == settings and cfg.env == env
    assert config_from_args(["--env", env, "--gamma", "0.9"]).gamma == 0.9
    assert config_from_args(["--env", env, "--config", str(CONFIG_DIR / "default.yaml")]).gamma == 0.95


def test_a_run_keeps_its_resolved_recipe_when_resumed_and_in_old_files(tmp_path):
    """Checkpoints hold the resolved config, so --resume rebuilds the recipe's network; run files and checkpoints
    written when a run without --preset recorded `preset: ''` still load."""
    cfg = config_from_args(["--env", "procgen/coinrun"])
    resumed = resumed_config({"steps": 2_000_000}, cfg.public_dict(), tmp_path / "last.pth")
    assert (resumed.backbone, resumed.gamma, resumed.preset, resumed.steps) == (
        "impala_cnn",
        0.999,
        cfg.preset,
        2_000_000,
    )
    old = Config.from_checkpoint(Config().public_dict() | {"preset": ""}, "old.pth")
    assert old.preset == "" and old.backbone == Config.backbone
    run_file = tmp_path / "config.yaml"
    run_file.write_text(RUN_FILE_HEADER + yaml.safe_dump(Config().run_file_dict() | {"preset": ""}))
    assert config_from_args(["--config", str(run_file)]).preset == ""


# what makes a recipe: a preset that leaves one of these to the defaults would change when the default run does
RECIPE_KEYS = {
    "env", "steps", "eval_interval", "num_envs", "num_steps", "update_epochs", "num_minibatches", "lr", "lr_schedule",
    "adam_eps", "gamma", "gae_lambda", "clip_coef", "clip_vloss", "ent_coef", "vf_coef", "max_grad_norm", "adv_norm",
    "history_length", "backbone", "pretrained", "freeze_backbone", "feature_norm", "trunk_hidden", "head_hidden",
    "value_norm",
}  # fmt: skip


@pytest.mark.parametrize("name", [n for n in preset_names() if n != "default"])
def test_presets_pin_every_setting_of_their_recipe(name):
    assert set(read_run_file(CONFIG_DIR / f"{name}.yaml")) >= RECIPE_KEYS
