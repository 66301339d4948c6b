"""DrAC's image augmentations (Raileanu et al. 2021, auto-drac `data_augs.py`) for the regularizers of the update.

The PPO loss itself never sees augmented frames (agent.py): the policy and value of an augmented stack are pulled
towards those of the clean one. Each transform draws its random parameters once per group of samples (a sample in
a feed-forward minibatch, a whole env sequence in a recurrent one) and applies them to every frame of the stack,
so the frames of a stack stay aligned. Frames arrive as (B, K*C, H, W) uint8; transforms return pixel values
(0-255 scale) that `ActorCritic.features` normalizes like any frame: uint8 where they stay whole numbers in range,
float32 where they do not (random_conv, color_jitter). auto-drac works on frames / 255; the constants below are
its, in its pixel units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# auto-drac's transforms in the order of its train.py (UCB-DrAC's arms: the order decides which it tries next), named
# with underscores: crop, random-conv, grayscale, flip, rotate, cutout, cutout-color, color-jitter
TRANSFORMS = ("crop", "random_conv", "grayscale", "flip", "rotate", "cutout", "cutout_color", "color_jitter")
AUGMENTATIONS = ("none", *TRANSFORMS, "ucb")  # ucb: UCB-DrAC, a bandit picks the transform of each update
COLOUR_AUGMENTATIONS = ("random_conv", "grayscale", "cutout_color", "color_jitter")  # these need RGB frames
# UCB-DrAC's c and the returns each transform's value averages: the values its runs used (auto-drac's arguments.py:
# --ucb_exploration_coef 0.1, --ucb_window_length 10; its UCB class's own default c, 0.5, is always overridden)
UCB_EXPLORATION, UCB_WINDOW = 0.1, 10
CROP_PAD = 12  # DrAC's crop for Procgen's 64x64 frames: replicate-pad 12 pixels, then a random 64x64 window
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as kornia's RgbToGrayscale that DrAC uses
# DrAC's cutout box: side lengths in [7, 22), top-left corner at (12 + height, 24 + width), fixed for 64x64 frames
BOX_MIN, BOX_MAX, BOX_PIVOT = 7, 22, (12, 24)
# DrAC's colour jitter: brightness, contrast, saturation factors in 1 +- 0.4, hue factor in 0 +- 0.5
JITTER_LOW, JITTER_HIGH = (0.6, 0.6, 0.6, -0.5), (1.4, 1.4, 1.4, 0.5)


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


def rotate(frames: torch.Tensor, generator: torch.Generator, groups: int) -> torch.Tensor:
    """DrAC's rotate: each sample's square frames turned by k quarter turns, k uniform in {0, 1, 2, 3} (np.rot90
    over (H, W): counter-clockwise). (B, K*C, H, H) -> the same shape and dtype."""
    turns = per_sample(to_device(torch.randint(0, 4, (groups,), generator=generator), frames.device), len(frames))
    rotations = torch.stack([frames.rot90(k, (2, 3)) for k in range(4)])  # (4, B, K*C, H, H)
    return rotations[turns, torch.arange(len(frames), device=frames.device)]


def box_mask(frames: torch.Tensor, sizes: torch.Tensor, pivot: tuple[int, int]) -> torch.Tensor:
    """sizes (B, 2) of boxes (height, width) -> (B, 1, H, W) bool: rows [pivot_h + height, pivot_h + 2 height) and
    columns [pivot_w + width, pivot_w + 2 width), cut at the frame's edge (DrAC's slice)."""
    _, _, height, width = frames.shape
    rows, cols = torch.arange(height, device=frames.device), torch.arange(width, device=frames.device)
    top, left = pivot[0] + sizes[:, :1], pivot[1] + sizes[:, 1:]  # (B, 1) each
    in_rows = (rows >= top) & (rows < top + sizes[:, :1])  # (B, H)
    in_cols = (cols >= left) & (cols < left + sizes[:, 1:])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def box_sizes(frames: torch.Tensor, generator: torch.Generator, groups: int, box: tuple[int, int]) -> torch.Tensor:
    """Each group's box (height, width), both uniform in [box[0], box[1]) -> per sample (B, 2)."""
    return per_sample(to_device(torch.randint(*box, (groups, 2), generator=generator), frames.device), len(frames))


def cutout(
    frames: torch.Tensor,
    generator: torch.Generator,
    groups: int,
    box: tuple[int, int] = (BOX_MIN, BOX_MAX),
    pivot: tuple[int, int] = BOX_PIVOT,
) -> torch.Tensor:
    """DrAC's cutout: a black box of random size in every channel of a sample's frames (see `box_mask`).
    (B, K*C, H, W) -> the same shape and dtype."""
    mask = box_mask(frames, box_sizes(frames, generator, groups, box), pivot)
    return frames.masked_fill(mask, 0)


def cutout_color(
    frames: torch.Tensor,
    generator: torch.Generator,
    groups: int,
    frame_channels: int,
    box: tuple[int, int] = (BOX_MIN, BOX_MAX),
    pivot: tuple[int, int] = BOX_PIVOT,
) -> torch.Tensor:
    """DrAC's cutout-color: cutout's box filled with a random RGB colour, each channel uniform in [0, 255) as its
    constructor draws it (randint(0, 255) / 255; its redraw after every minibatch drops the / 255, which fills the
    box with values up to 254 on frames in [0, 1]: not copied). (B, K*3, H, W) uint8 -> the same."""
    b, kc, _, _ = frames.shape
    sizes = box_sizes(frames, generator, groups, box)  # (B, 2)
    colours = per_sample(to_device(torch.randint(0, 255, (groups, 3), generator=generator), frames.device), b)
    fill = colours.to(frames.dtype).repeat(1, kc // frame_channels)[:, :, None, None]  # (B, K*3, 1, 1)
    return torch.where(box_mask(frames, sizes, pivot), fill, frames)


def rgb_to_hsv(rgb: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """auto-drac's rgb2hsv: (N, 3, H, W) in [0, 1] -> hue, saturation, value (N, 3, H, W), each in [0, 1]. Where
    channels tie for the maximum, blue's formula wins over green's over red's, as in theirs."""
    r, g, b = rgb.unbind(1)
    cmax, cmin = rgb.amax(1), rgb.amin(1)
    delta = cmax - cmin
    hue = torch.zeros_like(cmax)
    hue = torch.where(cmax == r, ((g - b) / (delta + eps)) % 6, hue)
    hue = torch.where(cmax == g, (b - r) / (delta + eps) + 2, hue)
    hue = torch.where(cmax == b, (r - g) / (delta + eps) + 4, hue)
    hue = torch.where(cmax == 0, 0.0, hue) / 6.0
    saturation = torch.where(cmax == 0, 0.0, delta / (cmax + eps))
    return torch.stack([hue, saturation, cmax], 1)


# per 60-degree sector of hue (and hue = 360, which auto-drac's sectors leave black): which of (c, x, 0) each of
# r', g', b' takes
HSV_SECTORS = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 2, 2]])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """auto-drac's hsv2rgb: (N, 3, H, W) hue, saturation, value -> RGB (N, 3, H, W) in [0, 1]."""
    hsv = hsv.clamp(0, 1)
    hue, saturation, value = hsv[:, 0] * 360.0, hsv[:, 1], hsv[:, 2]
    c = value * saturation
    x = -c * (torch.abs((hue / 60.0) % 2 - 1) - 1)
    sector = sum((hue >= 60.0 * k).long() for k in range(1, 7))  # (N, H, W) in 0..6, as their (hue < ...) tests
    picks = HSV_SECTORS.to(hsv.device)[sector].permute(3, 0, 1, 2)  # (3, N, H, W)
    rgb_prime = torch.stack([c, x, torch.zeros_like(c)]).gather(0, picks).transpose(0, 1)  # (N, 3, H, W)
    return (rgb_prime + (value - c)[:, None]).clamp(0, 1)


def jitter(rgb: torch.Tensor, factors: torch.Tensor, contrast_first: bool) -> torch.Tensor:
    """auto-drac's ColorJitter.transform: rgb (N, 3, H, W) in [0, 1], factors (N, 4) of brightness, contrast,
    saturation, hue -> (N, 3, H, W) in [0, 1]. Contrast scales each channel about its mean over the image; in HSV,
    brightness scales V, hue shifts H by factor * 255 / 360 of a turn, saturation scales S."""
    brightness, contrast, saturation, hue_shift = factors.T[:, :, None, None]  # each (N, 1, 1)

    def adjust_contrast(x: torch.Tensor) -> torch.Tensor:
        means = x.mean((2, 3), keepdim=True)
        return ((x - means) * contrast[:, None] + means).clamp(0, 1)

    def adjust_hsv(x: torch.Tensor) -> torch.Tensor:
        h, s, v = rgb_to_hsv(x).unbind(1)
        v = (v * brightness).clamp(0, 1)
        h = (h + hue_shift * 255.0 / 360.0) % 1
        s = (s * saturation).clamp(0, 1)
        return hsv_to_rgb(torch.stack([h, s, v], 1))

    return adjust_hsv(adjust_contrast(rgb)) if contrast_first else adjust_contrast(adjust_hsv(rgb))


def color_jitter(frames: torch.Tensor, generator: torch.Generator, groups: int, frame_channels: int) -> torch.Tensor:
    """DrAC's color-jitter: each group draws its four factors uniformly in JITTER_LOW..JITTER_HIGH; one draw per
    call decides whether contrast comes before the HSV steps or after (probability 1/2 each), as theirs does per
    minibatch. (B, K*3, H, W) uint8 -> float32 pixel values in [0, 255]."""
    b, kc, h, w = frames.shape
    low, high = torch.tensor(JITTER_LOW), torch.tensor(JITTER_HIGH)
    factors = low + (high - low) * torch.rand(groups, 4, generator=generator)
    contrast_first = torch.rand((), generator=generator).item() >= 0.5
    factors = per_sample(to_device(factors, frames.device), b).repeat_interleave(kc // frame_channels, 0)  # (B*K, 4)
    rgb = frames.reshape(b * kc // frame_channels, frame_channels, h, w).float() / 255.0
    return (jitter(rgb, factors, contrast_first) * 255.0).reshape(b, kc, h, w)


def augment(frames: torch.Tensor, kind: str, generator: torch.Generator, frame_channels: int, groups: int = 0):
    """frames (B, K*C, H, W) uint8 -> augmented the `kind` way, one draw of random parameters per group of samples
    (`groups` dividing B; 0: one per sample)."""
    groups = groups or len(frames)
    transforms = {
        "crop": lambda: crop(frames, generator, groups),
        "random_conv": lambda: random_conv(frames, generator, groups, frame_channels),
        "grayscale": lambda: grayscale(frames, frame_channels),
        "flip": lambda: flip(frames, generator, groups),
        "rotate": lambda: rotate(frames, generator, groups),
        "cutout": lambda: cutout(frames, generator, groups),
        "cutout_color": lambda: cutout_color(frames, generator, groups, frame_channels),
        "color_jitter": lambda: color_jitter(frames, generator, groups, frame_channels),
    }
    return transforms[kind]() if kind in transforms else frames


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
