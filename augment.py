"""DrAC's image augmentations (Raileanu et al. 2021, auto-drac `data_augs.py`) for the regularizers of the update.

The PPO loss itself never sees augmented frames (agent.py): the policy and value of an augmented stack are pulled
towards those of the clean one. Each transform draws its random parameters once per group of samples (a sample in
a feed-forward minibatch, a whole env sequence in a recurrent one) and applies them to every frame of the stack,
so the frames of a stack stay aligned. Frames arrive as (B, K*C, H, W) uint8; transforms return pixel values
(0-255 scale) that `ActorCritic.features` normalizes like any frame: uint8 where they stay in range, float32
where they do not (random_conv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRANSFORMS = ("crop", "grayscale", "flip", "random_conv")
AUGMENTATIONS = ("none", *TRANSFORMS, "ucb")  # ucb: UCB-DrAC, a bandit picks the transform of each update
COLOUR_AUGMENTATIONS = ("grayscale", "random_conv")  # these need RGB frames
# UCB-DrAC's c and the returns each transform's value averages: the values its runs used (auto-drac's arguments.py:
# --ucb_exploration_coef 0.1, --ucb_window_length 10; its UCB class's own default c, 0.5, is always overridden)
UCB_EXPLORATION, UCB_WINDOW = 0.1, 10
CROP_PAD = 12  # DrAC's crop for Procgen's 64x64 frames: replicate-pad 12 pixels, then a random 64x64 window
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as kornia's RgbToGrayscale that DrAC uses


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Parameters drawn on the host (the update's CPU generator) -> `device`; pinned, so a GPU does not wait."""
    if torch.device(device).type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def per_sample(params: torch.Tensor, batch: int) -> torch.Tensor:
    """Parameters of G groups (G, ...) -> of B samples (B, ...): sample b belongs to group b % G (the time-major
    layout of recurrent minibatches; G = B for feed-forward ones)."""
    return params[torch.arange(batch, device=params.device) % len(params)]


def window(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """frames (B, C, H', W') -> (B, C, height, width) starting at each sample's (top, left)."""
    batch = torch.arange(len(frames), device=frames.device)[:, None, None]
    rows = (top[:, None] + torch.arange(height, device=frames.device))[:, :, None]  # (B, height, 1)
    cols = (left[:, None] + torch.arange(width, device=frames.device))[:, None, :]  # (B, 1, width)
    return frames.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def crop(frames: torch.Tensor, generator: torch.Generator, groups: int, pad: int = CROP_PAD) -> torch.Tensor:
    """DrAC's crop: replicate-pad `pad` pixels, then an H x W window at a random offset in [0, 2 pad]^2 (a shift
    of up to +-pad, never resized). (B, K*C, H, W) -> the same shape and dtype."""
    _, _, height, width = frames.shape
    padded = F.pad(frames.float(), (pad, pad, pad, pad), mode="replicate").to(frames.dtype)
    offsets = per_sample(
        to_device(torch.randint(0, 2 * pad + 1, (groups, 2), generator=generator), frames.device), len(frames)
    )
    return window(padded, offsets[:, 0], offsets[:, 1], height, width)


def grayscale(frames: torch.Tensor, frame_channels: int) -> torch.Tensor:
    """Each RGB frame -> its luma in all three channels (deterministic). (B, K*3, H, W) uint8 -> the same."""
    b, kc, h, w = frames.shape
    rgb = frames.view(b, kc // frame_channels, frame_channels, h, w).float()
    luma = torch.einsum("bkchw,c->bkhw", rgb, torch.tensor(GRAY_WEIGHTS, device=frames.device))
    gray = luma.round().clamp(0, 255).to(frames.dtype)[:, :, None].expand(-1, -1, frame_channels, -1, -1)
    return gray.reshape(b, kc, h, w)


def flip(frames: torch.Tensor, generator: torch.Generator, groups: int, p: float = 0.5) -> torch.Tensor:
    """DrAC's flip: with probability `p` a sample's frames are turned upside down (its rows reversed, the axis DrAC
    flips)."""
    flipped = per_sample(to_device(torch.rand(groups, generator=generator) < p, frames.device), len(frames))
    return torch.where(flipped[:, None, None, None], frames.flip(2), frames)


def random_conv(frames: torch.Tensor, generator: torch.Generator, groups: int, frame_channels: int) -> torch.Tensor:
    """DrAC's random convolution: every group gets its own 3x3 convolution of the RGB channels (xavier-normal
    weights, no bias, zero padding 1), applied to each frame of its stacks. Unclamped: (B, K*3, H, W) float32."""
    b, kc, h, w = frames.shape
    c = frame_channels
    std = (2.0 / (c * 9 + c * 9)) ** 0.5  # xavier normal: gain 1, fan_in = fan_out = 3 * 3 * 3
    kernels = to_device(torch.randn(groups, c, c, 3, 3, generator=generator) * std, frames.device)
    kernels = per_sample(kernels, b)  # (B, C, C, 3, 3)
    x = frames.view(b, kc // c, c, h, w).transpose(0, 1).reshape(kc // c, b * c, h, w).float()  # frames x samples
    out = F.conv2d(x, kernels.reshape(b * c, c, 3, 3), padding=1, groups=b)  # each sample through its kernel
    return out.view(kc // c, b, c, h, w).transpose(0, 1).reshape(b, kc, h, w)


def augment(frames: torch.Tensor, kind: str, generator: torch.Generator, frame_channels: int, groups: int = 0):
    """frames (B, K*C, H, W) uint8 -> augmented the `kind` way, one draw of random parameters per group of samples
    (`groups` dividing B; 0: one per sample)."""
    groups = groups or len(frames)
    if kind == "crop":
        return crop(frames, generator, groups)
    if kind == "grayscale":
        return grayscale(frames, frame_channels)
    if kind == "flip":
        return flip(frames, generator, groups)
    if kind == "random_conv":
        return random_conv(frames, generator, groups, frame_channels)
    return frames


def usable_transforms(frame_channels: int) -> tuple[str, ...]:
    """The transforms that apply to these frames: the colour ones need RGB."""
    return tuple(t for t in TRANSFORMS if frame_channels == 3 or t not in COLOUR_AUGMENTATIONS)


class UcbSelector:
    """UCB-DrAC's bandit over the transforms (Raileanu et al. 2021, auto-drac `ucb_drac.py`): each update uses the
    transform with the highest Q(a) + c sqrt(ln N / n(a)), where Q(a) is the mean return (GAE targets averaged over
    the rollout) of the rollouts collected right after the last `window` updates that used a. The counts start at
    1, N at 1 and every Q at 0, as theirs do, so the first update takes the first transform."""

    def __init__(self, arms: tuple[str, ...], exploration: float = UCB_EXPLORATION, window: int = UCB_WINDOW):
        self.arms, self.exploration, self.window = arms, exploration, window
        self.total, self.counts = 1, [1] * len(arms)
        self.returns: list[list[float]] = [[] for _ in arms]
        self.current: int | None = None  # the arm of the last update, whose outcome is the next rollout

    def value(self, arm: int) -> float:
        return sum(self.returns[arm]) / len(self.returns[arm]) if self.returns[arm] else 0.0

    def select(self) -> str:
        scores = [
            self.value(a) + self.exploration * math.sqrt(math.log(self.total) / n) for a, n in enumerate(self.counts)
        ]
        self.current = max(range(len(self.arms)), key=scores.__getitem__)  # the first of equals, as np.argmax
        return self.arms[self.current]

    def record(self, mean_return: float) -> None:
        """The mean return of the rollout collected after an update with the current arm."""
        self.total += 1
        self.counts[self.current] += 1
        self.returns[self.current] = (self.returns[self.current] + [mean_return])[-self.window :]

    def state_dict(self) -> dict:
        return {"arms": list(self.arms), "total": self.total, "counts": list(self.counts),
                "returns": [list(r) for r in self.returns], "current": self.current}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["arms"]) != self.arms:
            raise ValueError(f"UCB-DrAC arms {state['arms']} are not this run's {list(self.arms)}")
        self.total, self.counts, self.current = state["total"], list(state["counts"]), state["current"]
        self.returns = [list(r) for r in state["returns"]]
