"""Image augmentation of frame stacks for the PPO update (RAD, Laskin et al. 2020; DrAC, Raileanu et al. 2021).

Every transform draws one random offset per sample and applies it to all channels of the sample, so the
frames of a stack stay aligned with each other. Evaluation and the rollout never see augmented frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "shift", "crop")


def random_offsets(batch: int, high: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) offsets in [0, high] per sample."""
    offsets = torch.randint(0, high + 1, (2, batch), generator=generator)
    if torch.device(device).type == "cuda":  # a pinned copy does not make the host wait for the GPU
        offsets = offsets.pin_memory()
    offsets = offsets.to(device, non_blocking=True)
    return offsets[0], offsets[1]


def window(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """frames (B, C, H', W') -> (B, C, height, width) starting at each sample's (top, left)."""
    batch = torch.arange(len(frames), device=frames.device)[:, None, None]
    rows = (top[:, None] + torch.arange(height, device=frames.device))[:, :, None]  # (B, height, 1)
    cols = (left[:, None] + torch.arange(width, device=frames.device))[:, None, :]  # (B, 1, width)
    return frames.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_shift(frames: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """DrAC / DrQ random shift: pad by repeating the border `pad` pixels, then crop back to the original size
    at a random offset. frames (B, C, H, W) uint8 -> the same shape and dtype."""
    _, _, height, width = frames.shape
    padded = F.pad(frames.float(), (pad, pad, pad, pad), mode="replicate").to(frames.dtype)
    top, left = random_offsets(len(frames), 2 * pad, generator, frames.device)
    return window(padded, top, left, height, width)


def random_crop(frames: torch.Tensor, generator: torch.Generator, margin: int = 4) -> torch.Tensor:
    """RAD random crop: a (H - 2 margin) x (W - 2 margin) window at a random offset, resized back to H x W
    (bilinear). frames (B, C, H, W) uint8 -> the same shape and dtype."""
    _, _, height, width = frames.shape
    top, left = random_offsets(len(frames), 2 * margin, generator, frames.device)
    crops = window(frames, top, left, height - 2 * margin, width - 2 * margin).float()
    resized = F.interpolate(crops, size=(height, width), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(frames.dtype)


def augment(frames: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """frames (B, K*C, H, W) uint8 -> augmented the `kind` way (none, shift or crop)."""
    if kind == "shift":
        return random_shift(frames, generator)
    if kind == "crop":
        return random_crop(frames, generator)
    return frames
