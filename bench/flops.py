"""Where a Crafter network's arithmetic goes: per stage and layer, and per phase of PPO (rollout vs update).

`python bench/flops.py` counts with `torch.utils.flop_counter` (matrix products and convolutions; norms,
activations and the optimizer are not counted) for one 64 x 64 RGB frame:
- the rollout: one forward pass per env step (the policy acts);
- the update: `update_epochs` forward and backward passes per env step (every sample is seen once an epoch).
GFLOP per env step = rollout + update, the figure issue 37's budget is set in (crafter-moon: about 9.2).
Networks: crafter-moon's wide IMPALA ResNet, its half-width `impala_cnn_moon_half`, the narrow IMPALA
[16, 32, 32] and the Nature CNN (crafter-cpu), all under Moon et al.'s trunk and heads (LayerNorm -> 1024).
Writes bench/results/flops.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policy import ActorCritic, PolicySpec  # noqa: E402

CRAFTER_FRAME = (3, 64, 64)
CRAFTER_ACTIONS = 17
UPDATE_EPOCHS = 3  # Moon et al.'s (crafter-moon, crafter-cpu)
NETWORKS = {  # name -> backbone, each under crafter-moon's trunk and heads
    "crafter-moon (IMPALA [64, 128, 128])": "impala_cnn_moon",
    "IMPALA [32, 64, 64] (impala_cnn_moon_half)": "impala_cnn_moon_half",
    "IMPALA [16, 32, 32] (impala_cnn)": "impala_cnn",
    "crafter-cpu (Nature CNN)": "nature_cnn",
}


def moon_policy(backbone: str) -> ActorCritic:
    """crafter-moon's network (configs/crafter-moon.yaml) on `backbone`."""
    spec = PolicySpec(backbone, CRAFTER_FRAME, 3, CRAFTER_ACTIONS, head_hidden=0, freeze_backbone=False,
                      feature_norm=True, trunk_hidden=1024, value_norm=True)  # fmt: skip
    return ActorCritic(spec)


def count(policy: ActorCritic, backward: bool) -> tuple[int, dict[str, int]]:
    """FLOPs of one sample's forward pass (and backward, if asked), total and per module (the counter's
    hierarchical names, e.g. ActorCritic.backbone.stages.1)."""
    obs = torch.randint(0, 256, (1, *CRAFTER_FRAME), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        logits, value = policy.minibatch_heads(policy.features(obs))
        if backward:
            (logits.sum() + value.sum()).backward()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def stage_split(per_module: dict[str, int], backbone_class: str) -> dict[str, int]:
    """Forward+backward FLOPs of each backbone stage (or layer), of each stage's first conv and residual blocks,
    and of everything after the backbone (its dense layer, the trunk, the heads)."""
    layer = re.compile(rf"^{backbone_class}\.(stages|convs)\.\d+(\.conv|\.blocks\.\d+)?$")
    split = {name.removeprefix(backbone_class + "."): flops for name, flops in per_module.items() if layer.match(name)}
    stages_total = sum(f for name, f in per_module.items() if re.match(rf"^{backbone_class}\.\w+\.\d+$", name))
    split["after the conv stages (dense, trunk, heads)"] = per_module["Global"] - stages_total
    return dict(sorted(split.items()))


def network_row(backbone: str) -> dict:
    policy = moon_policy(backbone)
    forward, _ = count(policy, backward=False)
    forward_backward, per_module = count(policy, backward=True)
    rollout, update = forward, UPDATE_EPOCHS * forward_backward
    return {
        "backbone": backbone,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "gflop_forward_per_sample": forward / 1e9,
        "gflop_forward_backward_per_sample": forward_backward / 1e9,
        "gflop_per_env_step": (rollout + update) / 1e9,
        "phases_gflop_per_env_step": {"rollout": rollout / 1e9, "update": update / 1e9},
        "parts_share_of_forward_backward": {
            part: round(flops / forward_backward, 4)
            for part, flops in stage_split(per_module, type(policy.backbone).__name__).items()
        },
    }


def main() -> None:
    torch.manual_seed(0)
    rows = {name: network_row(backbone) for name, backbone in NETWORKS.items()}
    moon = rows["crafter-moon (IMPALA [64, 128, 128])"]["gflop_per_env_step"]
    for name, row in rows.items():
        row["share_of_crafter_moon"] = row["gflop_per_env_step"] / moon
        phases = row["phases_gflop_per_env_step"]
        share = row["share_of_crafter_moon"]
        print(f"{name:45s} {row['gflop_per_env_step']:6.2f} GFLOP/env step ({share:.2f}x), rollout "
              f"{phases['rollout']:.2f} + update {phases['update']:.2f}; {row['parameters']:,} parameters")  # fmt: skip
        print("    " + ", ".join(f"{k} {v:.1%}" for k, v in row["parts_share_of_forward_backward"].items()))
    out = ROOT / "bench" / "results" / "flops.json"
    out.write_text(json.dumps({"update_epochs": UPDATE_EPOCHS, "frame": CRAFTER_FRAME, "networks": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
