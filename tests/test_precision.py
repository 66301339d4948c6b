"""--precision: auto picks bf16 only where it trains faster than fp32; bf16 leaves PPO's first step where fp32 does."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from toy_env import GridGoalVecEnv

import hardware
from config import Config, read_run_file
from hardware import native_bf16, precision_note, resolve_precision
from train import Trainer

CPU = torch.device("cpu")


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to cross-check with")
    return {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split()}


def test_native_bf16_agrees_with_the_cpu_flags():
    """PyTorch's own detection (what the code asks) against the kernel's flags (what the machine has)."""
    assert native_bf16(CPU) == bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "vendor", "auto"),
    [
        (True, True, "GenuineIntel", "bf16"),  # AMX: 1.6-2.4x fp32
        (False, True, "AuthenticAMD", "bf16"),  # Zen 4's AVX512-BF16: 1.05-1.9x
        (False, True, "GenuineIntel", "fp32"),  # an Intel Xeon's AVX512-BF16 without AMX: slower than fp32
        (False, False, "AuthenticAMD", "fp32"),  # no native bf16: emulated, several times slower
        (False, False, "GenuineIntel", "fp32"),
    ],
)
def test_auto_is_bf16_only_on_cpus_where_it_measured_faster(monkeypatch, amx, avx512_bf16, vendor, auto):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(hardware, "cpu_vendor", lambda: vendor)
    assert resolve_precision("auto", CPU) == auto
    assert resolve_precision("fp32", CPU) == "fp32"
    assert precision_note("auto", auto, CPU).startswith(f"{auto} (auto: ")


def test_auto_on_this_cpu_follows_its_flags_and_vendor():
    """The same rule read from the kernel's flags and vendor (what the machine has), not from PyTorch."""
    flags = cpu_flags()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    intel = any(line.startswith("vendor_id") and "GenuineIntel" in line for line in lines)
    faster = "amx_bf16" in flags or ("avx512_bf16" in flags and not intel)
    assert resolve_precision("auto", CPU) == ("bf16" if faster else "fp32")


def test_auto_is_fp32_on_gpus(monkeypatch):
    """On a GPU fp32 runs on TF32 tensor cores and bf16 measured slower (H200): auto keeps fp32 there."""
    monkeypatch.setattr(hardware, "bf16_pays_on_cpu", lambda: (True, "AMX on this CPU"))
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_bf16_on_gpus_needs_compute_capability_8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not native_bf16(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert native_bf16(torch.device("cuda"))


def test_explicit_bf16_without_hardware_support_warns_in_one_line(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning) as caught:
        assert resolve_precision("bf16", CPU) == "bf16"
    assert len(caught) == 1 and "\n" not in str(caught[0].message) and "emulated" in str(caught[0].message)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU) == "bf16"


def test_runs_and_checkpoints_of_older_versions_read_amp_as_precision(tmp_path):
    run_file = tmp_path / "config.yaml"
    run_file.write_text("env: crafter\namp: true\n")
    assert read_run_file(run_file) == {"env": "crafter", "precision": "bf16"}
    saved = Config().public_dict()
    del saved["precision"]
    assert Config.from_checkpoint(saved | {"amp": False}, "old.pth").precision == "fp32"


def test_checkpoints_from_before_a_setting_existed_keep_the_default_they_ran_with():
    """trunk_hidden, value_norm, adam_eps and friends arrived with defaults that kept the old behaviour, which the
    default run (crafter-cpu) has since changed: an old checkpoint resumes as it ran."""
    saved = Config().public_dict()
    for key in ("trunk_hidden", "value_norm", "adam_eps", "adv_norm", "clip_vloss"):
        del saved[key]
    cfg = Config.from_checkpoint(saved, "old.pth")
    assert (cfg.trunk_hidden, cfg.value_norm, cfg.adam_eps, cfg.adv_norm, cfg.clip_vloss) == (
        0,
        False,
        1e-5,
        "minibatch",
        True,
    )
    assert Config.from_checkpoint(Config().public_dict(), "new.pth") == Config()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_minibatch_starts_at_ratio_one_in_either_precision(tmp_path, precision):
    """The rollout and the update run the backbone under the same autocast, so before the first gradient step
    the update sees the rollout's log-probabilities: approx KL ~ 0 and nothing clipped. Rollout in bf16 and
    update in fp32 gave approx KL 8.6e-5 here. bf16 runs on every CPU (emulated where it is not native)."""
    cfg = Config(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=0, num_envs=8, num_steps=32,
        num_minibatches=1, update_epochs=1, steps=256, eval_interval=256, wandb_mode="disabled",
        eval_video=False, precision=precision, logdir=str(tmp_path / "run"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 emulated on this CPU: slow, but the same autocast
        trainer = Trainer(cfg, envs=GridGoalVecEnv(8, scale=8), eval_envs=GridGoalVecEnv(2, scale=8))
    assert trainer.policy.precision == precision
    torch.nn.init.orthogonal_(trainer.policy.policy_head.weight, gain=5.0)  # confident, as a trained policy is
    try:
        assert trainer.train_one_update()
    finally:
        trainer.close()
    stats = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    # bf16-sized tolerance: other CPUs may pick other bf16 kernels for batch 8 and batch 256 (exact here)
    assert abs(stats["losses/approx_kl"]) < 1e-5 and stats["losses/clipfrac"] == 0.0, stats
