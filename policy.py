"""Actor-critic on any timm backbone, plus the small CNNs pixel RL uses, registered in timm.

`timm.create_model("nature_cnn")` and `timm.create_model("impala_cnn")` work like any timm model, so
`--backbone` takes them or any other timm name (e.g. `tf_efficientnetv2_s.in21k_ft_in1k`).
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import KW_ONLY, asdict, dataclass
from itertools import pairwise
from typing import NamedTuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch.distributions import Categorical
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from errors import UsageError


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
        "impala_cnn_moon": _pixel_cfg(first_conv="stages.0.conv"),
        "impala_cnn_moon_half": _pixel_cfg(first_conv="stages.0.conv"),
    }
)


def glorot_init(module: nn.Module) -> nn.Module:
    """TensorFlow 1's default layer init (glorot uniform, zero bias), as in openai/baselines' IMPALA CNN."""
    nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def fan_in_init(module: nn.Module, scale: float) -> nn.Module:
    """Moon et al.'s init: PyTorch's default init with each output unit's weights rescaled to L2 norm `scale`."""
    with torch.no_grad():
        module.weight *= scale / module.weight.norm(dim=tuple(range(1, module.weight.ndim)), p=2, keepdim=True)
        if module.bias is not None:
            module.bias.zero_()
    return module


class InitLazyLinear(nn.LazyLinear):
    """A LazyLinear (input size known at the first forward) that applies `init` once its weights exist."""

    def __init__(self, out_features: int, init, bias: bool = True):
        self.init = init
        super().__init__(out_features, bias=bias)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features != 0:
            super().reset_parameters()  # PyTorch's default init first: fan_in_init rescales it
            self.init(self)


class LazyLayerNorm(LazyModuleMixin, nn.LayerNorm):
    """A LayerNorm over the last dimension whose size is read from the first input."""

    cls_to_become = nn.LayerNorm

    def __init__(self):
        super().__init__(0)
        self.weight, self.bias = UninitializedParameter(), UninitializedParameter()

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.normalized_shape != (0,):
            super().reset_parameters()

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.normalized_shape = (x.shape[-1],)
                self.weight.materialize(self.normalized_shape)
                self.bias.materialize(self.normalized_shape)
                self.reset_parameters()


class NatureCNN(nn.Module):
    """The DQN Nature CNN (Mnih et al. 2015) with CleanRL's init: 3 convs then a 512-d dense layer with ReLU,
    all orthogonal with gain sqrt(2) and zero bias."""

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
        self.fc = InitLazyLinear(feature_dim, orthogonal_init)  # input size depends on the frame size
        self.num_features = feature_dim
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class ResidualBlock(nn.Module):
    """openai/baselines' pre-activation block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = glorot_init(nn.Conv2d(channels, channels, 3, padding=1))
        self.conv1 = glorot_init(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaStage(nn.Module):
    """conv3x3 -> maxpool 3x3/2 -> two residual blocks (Espeholt et al. 2018)."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.conv = glorot_init(nn.Conv2d(in_chans, channels, 3, padding=1))
        self.blocks = nn.Sequential(ResidualBlock(channels), ResidualBlock(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.max_pool2d(self.conv(x), 3, stride=2, padding=1))


class ImpalaCNN(nn.Module):
    """IMPALA ResNet as in openai/baselines (the Procgen paper's network): three stages [16, 32, 32], ReLU,
    flatten, dense 256 with ReLU; glorot-uniform init, zero biases."""

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
        self.stages = nn.Sequential(*(ImpalaStage(a, b) for a, b in pairwise(chans)))
        self.fc = InitLazyLinear(feature_dim, glorot_init)
        self.num_features = feature_dim
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.relu(self.stages(x)), 1)
        return F.relu(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class NormConv(nn.Module):
    """Moon et al.'s conv layer: [GroupNorm(1)] -> conv3x3 (bias only without a norm) -> ReLU, fan-in init."""

    def __init__(self, in_chans: int, channels: int, scale: float, norm: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(1, in_chans) if norm else nn.Identity()
        self.conv = fan_in_init(nn.Conv2d(in_chans, channels, 3, padding=1, bias=not norm), scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(self.norm(x)))


class MoonImpalaStage(nn.Module):
    """conv -> maxpool 3x3/2 -> GroupNorm(1) -> two blocks x + conv(conv(x)) of NormConvs."""

    def __init__(self, in_chans: int, channels: int, scale: float, first_norm: bool, num_blocks: int = 2):
        super().__init__()
        self.conv = NormConv(in_chans, channels, 1.0, norm=first_norm)
        self.post_pool_norm = nn.GroupNorm(1, channels)
        block_scale = math.sqrt(scale / math.sqrt(num_blocks))  # both convs of a block: sqrt of the block's scale
        self.blocks = nn.ModuleList(
            nn.Sequential(NormConv(channels, channels, block_scale), NormConv(channels, channels, block_scale))
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post_pool_norm(F.max_pool2d(self.conv(x), 3, stride=2, padding=1))
        for block in self.blocks:
            x = x + block(x)
        return x


class MoonImpalaCNN(nn.Module):
    """The IMPALA ResNet of Moon et al. 2023's tuned Crafter PPO (snu-mllab/Achievement-Distillation,
    impala_cnn.py): channels [64, 128, 128], GroupNorm(1) before every conv but the first and after each
    pool, LayerNorm -> dense 256 (no bias) -> ReLU; fan-in init with their scales."""

    def __init__(self, in_chans: int = 3, num_classes: int = 0, channels=(64, 128, 128), feature_dim: int = 256, **_):
        super().__init__()
        chans = (in_chans, *channels)
        scale = 1 / math.sqrt(len(channels))
        self.stages = nn.Sequential(
            *(MoonImpalaStage(a, b, scale, first_norm=i > 0) for i, (a, b) in enumerate(pairwise(chans)))
        )
        self.dense_norm = LazyLayerNorm()
        self.fc = InitLazyLinear(feature_dim, lambda m: fan_in_init(m, 1.4), bias=False)
        self.num_features = feature_dim
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.stages(x), 1)
        return F.relu(self.fc(self.dense_norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model
def nature_cnn(pretrained: bool = False, **kwargs) -> NatureCNN:
    return build_model_with_cfg(NatureCNN, "nature_cnn", pretrained, **kwargs)


@register_model
def impala_cnn(pretrained: bool = False, **kwargs) -> ImpalaCNN:
    return build_model_with_cfg(ImpalaCNN, "impala_cnn", pretrained, **kwargs)


@register_model
def impala_cnn_moon(pretrained: bool = False, **kwargs) -> MoonImpalaCNN:
    """Moon et al. 2023's IMPALA ResNet for Crafter (crafter-moon preset)."""
    return build_model_with_cfg(MoonImpalaCNN, "impala_cnn_moon", pretrained, **kwargs)


@register_model
def impala_cnn_moon_half(pretrained: bool = False, **kwargs) -> MoonImpalaCNN:
    """Moon et al.'s IMPALA ResNet at half their widths, [32, 64, 64]: about a quarter of its arithmetic."""
    return build_model_with_cfg(MoonImpalaCNN, "impala_cnn_moon_half", pretrained, channels=(32, 64, 64), **kwargs)


# ---------------------------------------------------------------------------------- backbones


def check_backbone(name: str) -> None:
    if not timm.is_model(name):
        raise UsageError(f"unknown backbone {name!r}; see timm.list_models() or use {', '.join(default_cfgs)}")


def create_backbone(
    name: str, in_chans: int, pretrained: bool, pretrained_file: str = "", feature_level: int = -1
) -> tuple[nn.Module, bool]:
    """A timm model with its classifier removed (cut after `feature_level`, see `FeatureLevel`, when >= 0), and
    whether pretrained weights were loaded. They come from `pretrained_file` when given, else from the local hub
    cache or the hub; when they cannot be had, warn and keep the random init."""
    check_backbone(name)
    kwargs = {"num_classes": 0, "in_chans": in_chans}
    if pretrained and not pretrained_file:
        pretrained_file, reason = locate_pretrained_weights(name)
        if not pretrained_file:
            warnings.warn(f"no pretrained weights for {name} ({reason}); using random init", stacklevel=2)
    if not pretrained_file:
        model, loaded = timm.create_model(name, pretrained=False, **kwargs), False
    elif not os.path.isfile(pretrained_file):
        raise UsageError(f"backbone weights file not found: {pretrained_file}")
    else:
        try:
            overlay = {"file": pretrained_file}
            model, loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs), True
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise UsageError(f"cannot load backbone weights from {pretrained_file}: {str(e).splitlines()[0]}") from e
    return (FeatureLevel(model, name, feature_level) if feature_level >= 0 else model), loaded


class FeatureLevel(nn.Module):
    """A timm model cut after one of its feature levels (timm's feature_info: level 0 at stride 2, each next one
    at twice the stride; EfficientNet-Lite0 at 64x64: 16x32x32, 24x16x16, 40x8x8, 112x4x4, 320x2x2), whose map,
    flattened, is the features: early layers at the frame's own resolution, as PIE-G uses a frozen pretrained
    ResNet's (Yuan et al. 2022). The layers after that level are removed (timm's prune_intermediate_layers)."""

    def __init__(self, model: nn.Module, name: str, level: int):
        super().__init__()
        levels = len(getattr(model, "feature_info", []) or [])
        if not hasattr(model, "forward_intermediates") or not levels:
            raise UsageError(f"--feature-level: backbone {name} has no feature levels (timm's forward_intermediates)")
        if level >= levels:
            raise UsageError(f"--feature-level {level}: backbone {name} has feature levels 0 to {levels - 1}")
        model.prune_intermediate_layers([level], prune_norm=True, prune_head=True)
        self.model, self.level = model, level
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})  # the input normalization its weights expect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C' * H' * W'): the feature map at this level, flattened."""
        return self.model.forward_intermediates(x, indices=[self.level], intermediates_only=True)[0].flatten(1)


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
    _: KW_ONLY  # the network's settings by name
    head_hidden: int = 256
    freeze_backbone: bool = True
    feature_norm: bool = True  # LayerNorm on the backbone features
    trunk_hidden: int = 0  # a shared dense layer (with ReLU) between the features and the heads; 0: none
    value_norm: bool = False  # the value head predicts normalized returns (EwmaNormalizer)
    image_size: int = 0  # frames resized to this square size before the backbone; 0: native size
    feature_level: int = -1  # >= 0: the backbone's flattened feature map at this level (FeatureLevel); -1: pooled
    recurrent: str = "none"  # none, gru or lstm: a recurrent core between the trunk and the heads
    recurrent_size: int = 256

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


class EwmaNormalizer(nn.Module):
    """Running mean and variance of value targets as exponential moving averages with debiasing (Moon et al.'s
    NormalizeEwma: beta 0.99, debiasing clamped at 1e-2, variance floored at 1e-2). Buffers, so checkpoints
    keep them."""

    def __init__(self, beta: float = 0.99, epsilon: float = 1e-2, min_var: float = 1e-2):
        super().__init__()
        self.beta, self.epsilon, self.min_var = beta, epsilon, min_var
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor, reduce=lambda t: t) -> None:
        """Move the statistics towards the batch `x`; `reduce` averages the batch moments over ranks."""
        self.running_mean.mul_(self.beta).add_(reduce(x.mean()) * (1 - self.beta))
        self.running_mean_sq.mul_(self.beta).add_(reduce((x**2).mean()) * (1 - self.beta))
        self.debiasing_term.mul_(self.beta).add_(1 - self.beta)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / debias
        var = (self.running_mean_sq / debias - mean**2).clamp(min=self.min_var)
        return mean, var.sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean_std()
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean_std()
        return x * std + mean


class RecurrentCore(nn.Module):
    """A GRU or LSTM over each env's sequence of latents. Its state is one tensor (B, S) (LSTM: h and c side by
    side), zeroed wherever an episode starts. A sequence is run with one call of the recurrent module per
    stretch of steps in which no env starts an episode (one call for the whole sequence when none does)."""

    def __init__(self, kind: str, in_dim: int, size: int):
        super().__init__()
        self.kind, self.size = kind, size
        self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(in_dim, size)
        for name, param in self.rnn.named_parameters():  # CleanRL's ppo_atari_lstm init
            nn.init.orthogonal_(param) if "weight" in name else nn.init.zeros_(param)

    @property
    def state_size(self) -> int:
        return self.size * (2 if self.kind == "lstm" else 1)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.state_size, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, B, D), state (B, S) before step 0, starts (T, B) bool: step t begins an episode (its state is
        zeroed first) -> outputs (T, B, H), state (B, S) after the last step."""
        # one host sync for a whole sequence, none for a single step (the rollout's, which may be a CUDA graph)
        cuts = (torch.nonzero(starts[1:].any(1)).flatten() + 1).tolist() if len(x) > 1 else []
        outputs = []
        for a, b in zip([0, *cuts], [*cuts, len(x)], strict=True):
            state = state * ~starts[a, :, None]
            out, state = self.run(x[a:b], state)
            outputs.append(out)
        return torch.cat(outputs), state

    def run(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "gru":
            out, h = self.rnn(x, state[None].contiguous())
            return out, h[0]
        h, c = state.chunk(2, dim=-1)
        out, (h, c) = self.rnn(x, (h[None].contiguous(), c[None].contiguous()))
        return out, torch.cat([h[0], c[0]], dim=-1)


def gumbel_max_sample(logits: torch.Tensor) -> torch.Tensor:
    """One draw from Categorical(logits) per row (B, A) -> (B,) without host-device syncs (torch.multinomial
    checks its input with two): argmax(logits + Gumbel noise), the noise being -log of Exp(1) draws."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)


class Act(NamedTuple):
    action: torch.Tensor  # (B,)
    logprob: torch.Tensor  # (B,)
    value: torch.Tensor  # (B,) in reward units
    features: torch.Tensor  # (B, F) backbone output
    state: torch.Tensor | None  # (B, S) the recurrent state after this step; None without a recurrent core


@dataclass
class Memory:
    """What a policy carries from one env step to the next: its recurrent state (N, S) (None without a recurrent
    core) and which observations begin an episode (N,) bool. `ActorCritic.fresh_memory` makes the first."""

    state: torch.Tensor | None
    starts: torch.Tensor


class ActorCritic(nn.Module):
    """uint8 frame stacks -> backbone features -> [LayerNorm] -> [shared trunk] -> policy (logits) and value heads.

    The backbone always computes the same function in the rollout and in the update: it stays in eval mode
    (BatchNorm uses its running statistics, dropout is off), so PPO's ratio is 1 before the first step. The
    heads see features of unit scale (LayerNorm, unless `feature_norm` is off for networks whose published
    recipe has none), the policy's last layer starts at gain 0.01 (near-uniform actions) and the heads run in
    float32 even under --precision bf16."""

    def __init__(self, spec: PolicySpec, pretrained: bool = False, pretrained_file: str = ""):
        super().__init__()
        self.spec = spec
        in_chans, height, width = spec.obs_shape
        self.backbone, self.pretrained_loaded = create_backbone(
            spec.backbone, in_chans, pretrained, pretrained_file, spec.feature_level
        )
        mean, std = input_normalization(self.backbone, in_chans, spec.frame_channels)
        # (pixel / 255 - mean) / std as one multiply-add: pixel * scale + shift
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)
        self.backbone.eval()
        with torch.no_grad():  # also materializes lazy layers
            self.feature_dim = feature_dim = self.features(torch.zeros(2, in_chans, height, width)).shape[-1]
        self.backbone.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on CPU (oneDNN) and GPU
        self.feature_norm = nn.LayerNorm(feature_dim) if spec.feature_norm else nn.Identity()
        self.trunk = nn.Identity()
        if spec.trunk_hidden:  # Moon et al.: norm -> dense (no bias after a norm) -> ReLU, fan-in init
            dense = nn.Linear(feature_dim, spec.trunk_hidden, bias=not spec.feature_norm)
            self.trunk = nn.Sequential(fan_in_init(dense, 1.0), nn.ReLU())
        head_in = spec.trunk_hidden or feature_dim
        self.core = None
        if spec.recurrent != "none":
            self.core = RecurrentCore(spec.recurrent, head_in, spec.recurrent_size)
            head_in = spec.recurrent_size
        self.policy_head = mlp_head(head_in, spec.head_hidden, spec.num_actions, out_gain=0.01)
        # a normalized value head starts small (Moon et al.'s ScaledMSEHead: gain 0.1)
        self.value_head = mlp_head(head_in, spec.head_hidden, 1, out_gain=0.1 if spec.value_norm else 1.0)
        self.value_normalizer = EwmaNormalizer() if spec.value_norm else None
        self.cache_features = spec.freeze_backbone  # off when the update must see other inputs (augmentation)
        if spec.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> ActorCritic:
        super().train(mode)
        self.backbone.eval()  # one function in rollout and update: running BatchNorm statistics, no dropout
        return self

    precision = "fp32"  # "bf16": autocast the backbone (train.py --precision); heads and outputs stay float32
    # Frames per backbone call on a CPU (0: the whole batch at once). Each frame's features are the same either
    # way (the backbone never mixes samples: it stays in eval mode), but a whole minibatch's activations are
    # blocks over 32 MB, which glibc unmaps when they are freed and page-faults in anew at the next minibatch:
    # in chunks of 128 the update ran 1.75x faster for procgen-official's IMPALA CNN (minibatches of 2048) and
    # 1.29x for crafter-moon's (512) on a 2-core EPYC in bf16; the small Nature CNN's ran as fast as before
    # (bench/results/throughput-update-chunks.json). With glibc's mmap off, the whole minibatch runs as fast as
    # the chunks (bench/results/throughput-update-allocator.json). A GPU gets the whole batch.
    cpu_chunk = 128

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, K*C, H, W) uint8 -> features (B, F) float32."""
        grad = torch.is_grad_enabled() and not self.spec.freeze_backbone
        autocast = torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        chunked = obs.device.type == "cpu" and 0 < self.cpu_chunk < len(obs)
        with torch.set_grad_enabled(grad), autocast:
            if not chunked:
                return self.backbone(self.pixels(obs)).float()
            return torch.cat([self.backbone(self.pixels(part)).float() for part in obs.split(self.cpu_chunk)])

    def pixels(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, K*C, H, W) uint8 -> the backbone's input (B, K*C, H', W') float32, normalized, NHWC."""
        x = obs.contiguous(memory_format=torch.channels_last).float()  # NHWC while still 1 byte per value
        x = torch.addcmul(self.pixel_shift, x, self.pixel_scale)
        if self.spec.image_size:
            x = F.interpolate(x, size=(self.spec.image_size,) * 2, mode="bilinear", align_corners=False)
        return x

    @property
    def caches_features(self) -> bool:
        """A frozen backbone maps each observation to fixed features: compute them once per rollout."""
        return self.cache_features

    @property
    def recurrent(self) -> bool:
        """Whether a recurrent core carries state from step to step (--recurrent)."""
        return self.core is not None

    @property
    def state_size(self) -> int:
        """Size S of the recurrent state (B, S); 0 without a recurrent core."""
        return 0 if self.core is None else self.core.state_size

    def fresh_memory(self, num_envs: int) -> Memory:
        """The memory of `num_envs` envs before their first step: every observation begins an episode, and the
        recurrent state (None without a core) is zero."""
        device = self.pixel_scale.device
        state = self.core.initial_state(num_envs, device) if self.recurrent else None
        return Memory(state, torch.ones(num_envs, dtype=torch.bool, device=device))

    def heads(
        self, features: torch.Tensor, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """features (B, F) -> logits (B, A), value (B,) in the value head's units (normalized with value_norm),
        and the recurrent state after this step. With a recurrent core, features may also be sequences
        (T, B, F) with starts (T, B); outputs are then (T, B, ...)."""
        latent = self.trunk(self.feature_norm(features))
        if self.recurrent:
            single = latent.dim() == 2
            if single:
                latent, starts = latent[None], starts[None]
            latent, state = self.core(latent, state, starts)
            latent = latent[0] if single else latent
        return self.policy_head(latent), self.value_head(latent).squeeze(-1), state

    def to_reward_units(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.value_normalizer is None else self.value_normalizer.denormalize(value)

    def forward(
        self, obs: torch.Tensor, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, K*C, H, W) uint8 -> logits (B, A), value (B,) in reward units; a recurrent policy also takes
        its state (B, S) and starts (B,) bool: obs is the first of an episode."""
        state, starts = self.fill_memory(obs, state, starts)
        logits, value, _ = self.heads(self.features(obs), state, starts)
        return logits, self.to_reward_units(value)

    def fill_memory(self, obs: torch.Tensor, state, starts) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Default memory for a recurrent policy called without one: a fresh episode."""
        if not self.recurrent or state is not None:
            return state, starts
        memory = self.fresh_memory(len(obs))
        return memory.state, memory.starts

    def act(
        self,
        obs: torch.Tensor,
        state: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> Act:
        """Sample (or argmax) actions for obs (B, K*C, H, W) uint8, continuing the recurrent `state` (B, S)
        (zeroed where `starts` (B,) marks an episode's first obs); sampling draws from `generator` when given
        (evaluation), else from torch's global RNG."""
        state, starts = self.fill_memory(obs, state, starts)
        features = self.features(obs)
        logits, value, state = self.heads(features, state, starts)
        dist = Categorical(logits=logits, validate_args=False)
        if deterministic:
            action = logits.argmax(-1)
        elif generator is not None:
            action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
        elif logits.device.type == "cuda":
            action = gumbel_max_sample(logits)
        else:
            action = dist.sample()
        return Act(action, dist.log_prob(action), self.to_reward_units(value), features, state)

    def evaluate_actions(
        self,
        features: torch.Tensor,
        actions: torch.Tensor,
        state: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """features (B, F) -> log-prob (B,), entropy (B,), value (B,) in the value head's units, of `actions`
        under the current policy (see `minibatch_heads` for recurrent minibatches)."""
        logits, value = self.minibatch_heads(features, state, starts)
        dist = Categorical(logits=logits, validate_args=False)
        return dist.log_prob(actions), dist.entropy(), value

    def minibatch_heads(
        self, features: torch.Tensor, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, F) of an update's minibatch -> logits (B, A), value (B,) in the value head's units. A
        recurrent policy re-runs whole env sequences: B = T * n time-major, from `state` (n, S) at step 0, with
        `starts` (B,) where episodes begin."""
        if self.recurrent:
            n = len(state)
            features, starts = features.view(-1, n, features.shape[-1]), starts.view(-1, n)
        logits, value, _ = self.heads(features, state, starts)
        return logits.reshape(-1, logits.shape[-1]), value.reshape(-1)

    def value(
        self, obs: torch.Tensor, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs (B, K*C, H, W) uint8 -> V(obs) (B,) in reward units."""
        return self.forward(obs, state, starts)[1]
