"""Actor-critic on any timm backbone, plus the small CNNs pixel RL uses, registered in timm.

`timm.create_model("nature_cnn")` and `timm.create_model("impala_cnn")` work like any timm model, so
`--backbone` takes them or any other timm name (e.g. `tf_efficientnetv2_s.in21k_ft_in1k`).
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch.distributions import Categorical

from env import UsageError


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """CleanRL's layer init: orthogonal weights with `gain`, constant bias."""
    nn.init.orthogonal_(module.weight, gain)
    nn.init.constant_(module.bias, bias)
    return module


# ------------------------------------------------------------------------------ timm pixel CNNs


def _pixel_cfg(**kwargs) -> dict:
    """Pixel CNNs take raw [0, 1] frames: identity normalization, no pretrained weights published."""
    return {
        "url": "",
        "num_classes": 0,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "convs.0",
        "classifier": "",
        "input_size": (3, 64, 64),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "nature_cnn": _pixel_cfg(first_conv="convs.0", input_size=(4, 84, 84)),
        "impala_cnn": _pixel_cfg(first_conv="stages.0.conv"),
        "impala_cnn_wide": _pixel_cfg(first_conv="stages.0.conv"),
    }
)


class NatureCNN(nn.Module):
    """The DQN Nature CNN (Mnih et al. 2015): 3 convs then a 512-d dense layer with ReLU."""

    def __init__(self, in_chans: int = 4, num_classes: int = 0, feature_dim: int = 512, **_):
        super().__init__()
        self.convs = nn.Sequential(
            orthogonal_init(nn.Conv2d(in_chans, 32, 8, stride=4)),
            nn.ReLU(),
            orthogonal_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            orthogonal_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.LazyLinear(feature_dim)  # input size depends on the frame size
        self.num_features = feature_dim
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaStage(nn.Module):
    """conv3x3 -> maxpool 3x3/2 -> two residual blocks (Espeholt et al. 2018)."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, channels, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(channels), ResidualBlock(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.max_pool2d(self.conv(x), 3, stride=2, padding=1))


class ImpalaCNN(nn.Module):
    """IMPALA ResNet: three stages, ReLU, flatten, dense layer with ReLU."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 0,
        channels: tuple[int, ...] = (16, 32, 32),
        feature_dim: int = 256,
        **_,
    ):
        super().__init__()
        chans = (in_chans, *channels)
        self.stages = nn.Sequential(*(ImpalaStage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)))
        self.fc = nn.LazyLinear(feature_dim)
        self.num_features = feature_dim
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.relu(self.stages(x)), 1)
        return F.relu(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model
def nature_cnn(pretrained: bool = False, **kwargs) -> NatureCNN:
    return build_model_with_cfg(NatureCNN, "nature_cnn", pretrained, **kwargs)


@register_model
def impala_cnn(pretrained: bool = False, **kwargs) -> ImpalaCNN:
    return build_model_with_cfg(ImpalaCNN, "impala_cnn", pretrained, **kwargs)


@register_model
def impala_cnn_wide(pretrained: bool = False, **kwargs) -> ImpalaCNN:
    """The wider IMPALA ResNet of Moon et al. 2023's tuned Crafter PPO."""
    return build_model_with_cfg(ImpalaCNN, "impala_cnn_wide", pretrained, channels=(64, 128, 128), **kwargs)


# ---------------------------------------------------------------------------------- backbones


def create_backbone(name: str, in_chans: int, pretrained: bool, pretrained_file: str = "") -> nn.Module:
    """A timm model with its classifier removed. Pretrained weights come from `pretrained_file` when
    given, else from the local hub cache or the hub; when they cannot be had, warn and keep the random
    init."""
    if not timm.is_model(name):
        raise UsageError(f"unknown backbone {name!r}; see timm.list_models() or use nature_cnn / impala_cnn")
    kwargs = {"num_classes": 0, "in_chans": in_chans}
    if pretrained and not pretrained_file:
        pretrained_file, reason = locate_pretrained_weights(name)
        if not pretrained_file:
            warnings.warn(f"no pretrained weights for {name} ({reason}); using random init", stacklevel=2)
    if not pretrained_file:
        return timm.create_model(name, pretrained=False, **kwargs)
    if not os.path.isfile(pretrained_file):
        raise UsageError(f"backbone weights file not found: {pretrained_file}")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained_file}, **kwargs)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise UsageError(f"cannot load backbone weights from {pretrained_file}: {str(e).splitlines()[0]}") from e


def locate_pretrained_weights(name: str, timeout: float = 3.0) -> tuple[str, str]:
    """-> (path of the model's published weights, downloaded or cached; or "", why not).
    Probes the hub first so an offline machine gets its answer in seconds, not minutes of retries."""
    cfg = timm.models.get_pretrained_cfg(name)
    repo = cfg.hf_hub_id if cfg else None
    if not repo:
        return "", "none published"
    import huggingface_hub

    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached, ""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as e:
        return "", f"hub unreachable: {e}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return huggingface_hub.hf_hub_download(repo, filename), ""
        except Exception as e:  # missing file, auth, network: try the next name, then give up
            reason = f"download failed: {str(e).splitlines()[0][:120]}"
    return "", reason


def input_normalization(backbone: nn.Module, in_chans: int, frame_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input-channel mean/std (1, in_chans, 1, 1) from the backbone's pretrained config.
    RGB frames reuse the RGB statistics per stacked frame; grayscale frames use their average."""
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32)
    if frame_channels != 3:
        mean, std = mean.mean().repeat(frame_channels), std.mean().repeat(frame_channels)
    reps = in_chans // frame_channels
    return mean.repeat(reps).view(1, -1, 1, 1), std.repeat(reps).view(1, -1, 1, 1)


# ------------------------------------------------------------------------------- actor-critic


@dataclass
class PolicySpec:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    backbone: str
    obs_shape: tuple[int, int, int]  # (K*C, H, W)
    frame_channels: int
    num_actions: int
    head_hidden: int = 256
    freeze_backbone: bool = True

    def to_dict(self) -> dict:
        return asdict(self) | {"obs_shape": list(self.obs_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        return cls(**(d | {"obs_shape": tuple(d["obs_shape"])}))


def mlp_head(in_dim: int, hidden: int, out_dim: int, out_gain: float) -> nn.Module:
    """Three linear layers with ReLU, orthogonally initialized (last layer with `out_gain`); with
    hidden=0 one linear layer, as in CleanRL's and the Procgen paper's networks."""
    if hidden == 0:
        return orthogonal_init(nn.Linear(in_dim, out_dim), gain=out_gain)
    return nn.Sequential(
        orthogonal_init(nn.Linear(in_dim, hidden)),
        nn.ReLU(),
        orthogonal_init(nn.Linear(hidden, hidden)),
        nn.ReLU(),
        orthogonal_init(nn.Linear(hidden, out_dim), gain=out_gain),
    )


class Act(NamedTuple):
    action: torch.Tensor  # (B,)
    logprob: torch.Tensor  # (B,)
    value: torch.Tensor  # (B,)
    features: torch.Tensor  # (B, F) backbone output


class ActorCritic(nn.Module):
    """uint8 frame stacks -> backbone features -> separate policy (logits) and value heads."""

    def __init__(self, spec: PolicySpec, pretrained: bool = False, pretrained_file: str = ""):
        super().__init__()
        self.spec = spec
        in_chans, height, width = spec.obs_shape
        self.backbone = create_backbone(spec.backbone, in_chans, pretrained, pretrained_file)
        mean, std = input_normalization(self.backbone, in_chans, spec.frame_channels)
        # (pixel / 255 - mean) / std as one multiply-add: pixel * scale + shift
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)
        with torch.no_grad():  # also materializes lazy layers
            self.feature_dim = feature_dim = self.backbone(torch.zeros(2, in_chans, height, width)).shape[-1]
        self.backbone.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on CPU (oneDNN) and GPU
        self.policy_head = mlp_head(feature_dim, spec.head_hidden, spec.num_actions, out_gain=0.01)
        self.value_head = mlp_head(feature_dim, spec.head_hidden, 1, out_gain=1.0)
        if spec.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ActorCritic:
        super().train(mode)
        if self.spec.freeze_backbone:
            self.backbone.eval()  # frozen means frozen: no BatchNorm statistics updates either
        return self

    amp = False  # bf16 autocast for the backbone and heads (train.py --amp); outputs stay float32

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.pixel_scale.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, K*C, H, W) uint8 -> features (B, F) float32."""
        x = obs.contiguous(memory_format=torch.channels_last).float()  # NHWC while still 1 byte per value
        x = torch.addcmul(self.pixel_shift, x, self.pixel_scale)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.spec.freeze_backbone), self.autocast():
            return self.backbone(x).float()

    @property
    def caches_features(self) -> bool:
        """A frozen backbone maps each observation to fixed features: compute them once per rollout."""
        return self.spec.freeze_backbone

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, F) -> logits (B, A), value (B,), float32."""
        with self.autocast():
            return self.policy_head(features).float(), self.value_head(features).squeeze(-1).float()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, K*C, H, W) uint8 -> logits (B, A), value (B,)."""
        return self.heads(self.features(obs))

    def act(self, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None) -> Act:
        """Sample (or argmax) actions for obs (B, K*C, H, W) uint8; sampling draws from `generator` when
        given (evaluation), else from torch's global RNG."""
        features = self.features(obs)
        logits, value = self.heads(features)
        dist = Categorical(logits=logits, validate_args=False)
        if deterministic:
            action = logits.argmax(-1)
        elif generator is not None:
            action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        else:
            action = dist.sample()
        return Act(action, dist.log_prob(action), value, features)

    def evaluate_actions(self, features: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """features (B, F) -> log-prob (B,), entropy (B,), value (B,) of `actions` under the current policy."""
        logits, value = self.heads(features)
        dist = Categorical(logits=logits, validate_args=False)
        return dist.log_prob(actions), dist.entropy(), value

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(obs))[1]
