"""Crafter score at 1M steps against arithmetic and time: the trade-off table and plot of issue 37.

`python bench/tradeoff.py` reads the learning results (bench/results/*.json, written by bench/learning.py) and the
FLOP counts (bench/results/flops.json, bench/flops.py), and writes bench/results/crafter-tradeoff.json and .png:
for each network under Moon et al.'s PPO, the Crafter score over all training episodes of the first 1,000,000
steps (the published protocol) per seed and their mean (with a 95% bootstrap interval from 3 seeds), GFLOP per env
step, and hours per 1M-step seed at the measured steps/s (two seeds side by side on 2 cores), with the device and
precision each run recorded. A network whose runs are short of 1M is listed with the score at their last step
and drawn hollow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from learning import bootstrap_ci  # noqa: E402

BUDGET = 1_000_000  # Crafter's protocol: the episodes of the first 1M steps
# network -> (results file, system in it, its row in flops.json)
NETWORKS = {
    "crafter-cpu (Nature CNN)": ("crafter-1024k.json", "crafter_moon_nature_cnn", "crafter-cpu (Nature CNN)"),
    "IMPALA [16, 32, 32]": ("crafter-width-1024k-partial.json", "impala_cnn", "IMPALA [16, 32, 32] (impala_cnn)"),
    "IMPALA [32, 64, 64] (moon_half)": (
        "crafter-budget-512k-partial.json",
        "moon_half",
        "IMPALA [32, 64, 64] (impala_cnn_moon_half)",
    ),
    "crafter-moon (IMPALA [64, 128, 128])": (
        "crafter-1024k.json",
        "crafter_moon",
        "crafter-moon (IMPALA [64, 128, 128])",
    ),
}
MOON_PUBLISHED = 15.6  # Moon et al. 2023, 10 seeds
NOTES = {  # what the measured steps/s do not say by themselves
    "IMPALA [32, 64, 64] (moon_half)": "its runs' steps/s include stretches where the test suite shared the 2 cores; "
    "alone, two side by side (147,456 to 270,336, AMD EPYC, bf16): 78.5 steps/s each, 3.5 hours per 1M seed",
}


def score_at_budget(curve: list) -> tuple[int, float]:
    """The last point of a run's curve at or before 1M steps: (step, Crafter score)."""
    step, score = [point for point in curve if point[0] <= BUDGET][-1]
    return int(step), float(score)


def where_it_ran(run: dict) -> str:
    """Device and precision of each stretch, as the run recorded them (older runs: the precision only)."""
    stretches = run.get("stretches") or []
    places = sorted({f"{s['device']} {s['precision']}" for s in stretches})
    return ", ".join(places) if places else f"device not recorded, {run.get('precision', 'fp32')}"


def network_row(results_file: str, system: str, flops: dict) -> dict:
    runs = [r for r in json.loads((RESULTS / results_file).read_text())["runs"] if r["system"] == system]
    seeds = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        step, score = score_at_budget(run["curve"])
        seeds.append({"seed": run["seed"], "step": step, "score": score, "steps_per_s": run["sps"],
                      "ran_on": where_it_ran(run)})  # fmt: skip
    finished = [s["score"] for s in seeds if run_reached_budget(s)]
    row = {
        "results": results_file,
        "gflop_per_env_step": flops["gflop_per_env_step"],
        "seeds": seeds,
        "mean_at_1M": float(np.mean(finished)) if len(finished) == len(seeds) else None,
        "hours_per_1M_seed": BUDGET / float(np.mean([s["steps_per_s"] for s in seeds])) / 3600,
    }
    if row["mean_at_1M"] is not None and len(finished) >= 3:
        row["ci95_at_1M"] = bootstrap_ci(finished)
    return row


def run_reached_budget(seed: dict) -> bool:
    return seed["step"] > BUDGET - 4096  # the last update before 1M


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "gflop_per_env_step", "GFLOP per env step (rollout + 3 epochs)"),
        (axes[1], "hours_per_1M_seed", "hours per 1M-step seed (2 seeds side by side, 2 cores)"),
    ):
        for color, (name, row) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], rows.items(), strict=False):
            x, scores = row[key], [s["score"] for s in row["seeds"]]
            if row["mean_at_1M"] is None:  # short of 1M: hollow, at the steps it reached
                reached = min(s["step"] for s in row["seeds"])
                ax.scatter([x] * len(scores), scores, facecolors="none", edgecolors=color, s=30,
                           label=f"{name}, at {reached // 1000}k steps (partial)")  # fmt: skip
                continue
            ax.scatter([x] * len(scores), scores, color=color, alpha=0.5, s=18)
            ax.scatter([x], [row["mean_at_1M"]], color=color, marker="D", s=50, label=name)
        ax.axhline(MOON_PUBLISHED, color="grey", linestyle="--", linewidth=1, label="Moon et al. 2023: 15.6%")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Crafter score at 1M steps (%)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Crafter score against arithmetic and time (each seed, and the mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    flops = json.loads((RESULTS / "flops.json").read_text())["networks"]
    rows = {name: network_row(file, system, flops[row]) for name, (file, system, row) in NETWORKS.items()}
    for name, note in NOTES.items():
        rows[name]["note"] = note
    for name, row in rows.items():
        seeds = ", ".join(f"{s['score']:.2f} at {s['step']:,}" for s in row["seeds"])
        mean = f"mean {row['mean_at_1M']:.2f}" if row["mean_at_1M"] is not None else "not at 1M yet"
        print(f"{name:38s} {row['gflop_per_env_step']:5.2f} GFLOP  {row['hours_per_1M_seed']:5.1f} h  {mean}: {seeds}")
    (RESULTS / "crafter-tradeoff.json").write_text(json.dumps({"budget": BUDGET, "networks": rows}, indent=1))
    plot(rows, RESULTS / "crafter-tradeoff.png")
    print(f"wrote {RESULTS / 'crafter-tradeoff.json'} and .png")


if __name__ == "__main__":
    main()
