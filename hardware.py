"""Hardware questions: the device a run uses and the arithmetic that pays on it (bf16 or fp32).

The one module of the settings that needs torch: config.py stays light, so `--help` and a mistyped flag are
answered before torch loads.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from errors import UsageError


def resolve_device(name: str) -> torch.device:
    """--device -> a torch.device; auto: the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"unknown --device {name!r}") from e


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware, as PyTorch detects it: a CPU with AVX512-BF16 or AMX (oneDNN
    emulates bf16 on other CPUs, several times slower than fp32), a GPU of compute capability 8.0 or newer."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def cpu_vendor() -> str:
    """The CPU's vendor as Linux names it ("GenuineIntel", "AuthenticAMD"); "" where /proc/cpuinfo is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return ""


def bf16_pays_on_cpu() -> tuple[bool, str]:
    """Whether bf16 autocast trains faster than fp32 on this CPU, and why. Native bf16 is not enough: training ran
    1.6-2.4x faster in bf16 with AMX (Intel Xeon) and 1.05-1.9x with AVX512-BF16 on an AMD EPYC (Zen 4), but on
    an Intel Xeon with AVX512-BF16 and no AMX (absent, or not enabled by the OS) every preset's PPO update ran
    faster in fp32, whose two 512-bit FMA units outpace oneDNN's bf16 kernels there (bf16 at 0.67-0.83x;
    bench/results/throughput-precision.json, from `python bench/throughput.py --only precision`)."""
    if torch.cpu._is_amx_tile_supported():
        return True, "AMX on this CPU"
    if not torch.cpu._is_avx512_bf16_supported():
        return False, "no native bf16 on this CPU"
    if cpu_vendor() == "GenuineIntel":
        return False, "AVX512-BF16 without AMX, slower than fp32 on this Intel CPU"
    return True, "AVX512-BF16 on this CPU"


def resolve_precision(name: str, device: torch.device) -> str:
    """--precision on `device` -> "bf16" or "fp32". auto is bf16 autocast where it trains faster than fp32 on
    this CPU (`bf16_pays_on_cpu`) and fp32 elsewhere: on GPUs fp32 runs on TF32 tensor cores and bf16 measured
    slower (H200). An explicit bf16 without hardware support warns: it is emulated, slowly."""
    if name == "auto":
        return "bf16" if device.type == "cpu" and bf16_pays_on_cpu()[0] else "fp32"
    if name == "bf16" and not native_bf16(device):
        what = "this GPU (compute capability < 8.0)" if device.type == "cuda" else f"this {device.type.upper()}"
        warnings.warn(
            f"--precision bf16: {what} has no native bf16, so it is emulated and runs several times slower than "
            "fp32 (--precision auto picks fp32 here)",
            stacklevel=2,
        )
    return name


def precision_note(name: str, used: str, device: torch.device) -> str:
    """How a run's precision was chosen, for the start line and config.yaml: "bf16 (auto: AMX on this CPU)"."""
    if name != "auto":
        return used
    if device.type != "cpu":
        return f"{used} (auto: TF32 on GPUs)" if device.type == "cuda" else f"{used} (auto)"
    return f"{used} (auto: {bf16_pays_on_cpu()[1]})"
