"""Learning curves at equal steps: pixelppo against baselines and published figures.

`python bench/learning.py atari-breakout --seeds 1 2 --steps 300000 --parallel 2` trains every system of the
experiment for every seed in fresh processes (logs under logs/learning/<experiment>/, or $PIXELPPO_LEARNING_LOGS
outside a work tree that may be laid anew between sittings), then writes
bench/results/<experiment>-<steps>.json (the table: final metric per run, mean and spread per system, with 3 seeds
or more a 95% bootstrap interval of the mean, and the metric averaged over each quarter of the budget, steadier than
the last point of a noisy curve; every run's curve and in-training evaluations) and
bench/results/<experiment>-<steps>.png (the curves), e.g. atari-breakout-300k.json. Runs already finished are
read back, not run again; a stopped pixelppo run is continued with --resume, so an experiment can be spread over
several sessions. `--reuse bench/results/FILE.json` takes finished runs from a committed results file instead of
running them again (cut at --steps): on the CPU the same command reproduces a run's curve exactly. `--partial`
trains nothing and writes the curves of runs stopped short of --steps (SIGTERM saves them; runs not started yet
are left out) as <experiment>-<steps>-partial.json, to commit a long experiment's progress at the end of a
sitting. A run stopped by SIGTERM or SIGINT while this script waits for it is reported as stopped; the others go
on, and the results are written as <experiment>-<steps>-partial.json too. `--carry DIR` also copies each stopped
run's files (its last.pth, metrics and evaluation history; not best_model.pth) to DIR/<experiment>/<run>/ and,
where a run's logdir has no last.pth, continues it from there: on machines that are not kept between sittings,
committing DIR with the partial results is what lets the next sitting continue the run. A finished run's copy
is removed.

Experiments:
- atari-breakout: `--preset atari-cleanrl` in fp32 and in bf16 (`--precision`) against CleanRL's ppo_atari.py
  (bench/baselines.py); all follow the 10M-step recipe (the learning rate anneals over 10M steps) and stop at
  --steps. Metric: mean raw full-game return of the last 100 training episodes.
- crafter: a small trained CNN in fp32 and in bf16, the effnetv2s-frozen preset (the first default run: a frozen
  EfficientNetV2-S at random init, and frozen pretrained EfficientNet-Lite0 features), crafter-moon and crafter-cpu
  (the default run), all on the published 1M-step budget (the learning rate anneals over 1M steps; a smaller
  --steps stops early). Metric: Crafter score over all training episodes (the published protocol).
- crafter-ablations: crafter-cpu (Moon et al.'s PPO on the Nature CNN) with one of its ingredients left out per
  system, at equal steps; `--reuse bench/results/crafter-1024k.json` brings crafter-cpu's own runs.
- crafter-width: Moon et al.'s PPO on three networks: the Nature CNN (crafter-cpu), the narrow IMPALA ResNet
  [16, 32, 32] and their wide one (crafter-moon); `--reuse bench/results/crafter-1024k.json` brings the first and
  the last.
- crafter-frozen-levels: crafter-cpu's recipe on frozen ImageNet EfficientNet-Lite0 features taken early, at the
  frame's resolution, as PIE-G does (`--feature-level 1`: 24 x 16 x 16, level 2: 40 x 8 x 8), against crafter-cpu
  itself (`--reuse bench/results/crafter-1024k.json`).
- procgen-starpilot: `--preset procgen-official`, with and without DrAC (`--augment crop`), against a plain PyTorch loop
  over ProcgenGym3Env with the same settings (bench/baselines.py). Metric: mean return of the last 100 training
  episodes; evaluate.py then scores each pixelppo run's last checkpoint on its training levels and on unseen
  levels (the generalization gap).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOGS = Path(os.environ.get("PIXELPPO_LEARNING_LOGS", ROOT / "logs" / "learning"))  # the runs, on this machine
RESULTS = ROOT / "bench" / "results"
QUIET = ["--wandb-mode", "disabled", "--no-eval-video", "--progress-interval", "120"]
STOP_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT}  # train.py saved and stopped on a signal
NOT_CARRIED = {"best_model.pth", "result.json"}  # the best evaluation's weights, a finished run's figures

# Published or measured reference lines drawn beside the curves: (label, value).
REFERENCES = {
    "crafter": [("random 1.6%", 1.6), ("PPO, Hafner 2021: 4.6%", 4.6), ("Moon et al. 2023: 15.6%", 15.6)],
}


@dataclass
class System:
    """One way of training: pixelppo flags, or a baseline in bench/baselines.py."""

    name: str
    train_args: list[str] | None = None  # pixelppo: train.py flags (--steps/--stop-after/--seed/--logdir added)
    baseline: list[str] | None = None  # baselines.py arguments (--updates and --seed added)
    batch: int = 1024  # the baseline's steps per update


CRAFTER_BUDGET = ["--steps", "1000000"]  # Hafner 2021's protocol: the schedule spans 1M steps
FROZEN = ["--preset", "effnetv2s-frozen"]  # the first default run's design: CleanRL-style PPO, 4 frames, 3-layer heads
NATURE_CNN = [*FROZEN, "--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone", "--num-envs", "16",
              "--head-hidden", "0", *CRAFTER_BUDGET]  # fmt: skip
CRAFTER_CPU = ["--preset", "crafter-moon", "--backbone", "nature_cnn", "--steps", "1024000"]  # = crafter-cpu
LITE0_FROZEN = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "--pretrained-file", "LITE0",
                "--freeze-backbone"]  # fmt: skip
ATARI_BREAKOUT = ["--preset", "atari-cleanrl", "--env", "atari/Breakout", "--steps", "10000000"]

EXPERIMENTS: dict[str, dict] = {
    "atari-breakout": {
        "metric": "return_last_100",
        "systems": [
            System("pixelppo", [*ATARI_BREAKOUT, "--precision", "fp32"]),
            System("pixelppo_bf16", [*ATARI_BREAKOUT, "--precision", "bf16"]),
            System("cleanrl", baseline=["atari", "--env-id", "BreakoutNoFrameskip-v4"], batch=8 * 128),
        ],
    },
    "crafter": {
        "metric": "crafter_score",
        "evaluate_episodes": 100,  # evaluate.py on the last checkpoint: mean return, score and achievement rates
        "systems": [
            System("nature_cnn", [*NATURE_CNN, "--precision", "fp32"]),
            System("nature_cnn_bf16", [*NATURE_CNN, "--precision", "bf16"]),
            System("frozen_random_effnetv2s", [*FROZEN, "--no-pretrained", *CRAFTER_BUDGET]),
            System(
                "frozen_lite0_imagenet",
                [*FROZEN, "--backbone", "tf_efficientnet_lite0", "--pretrained-file", "LITE0", *CRAFTER_BUDGET],
            ),
            System("crafter_moon", ["--preset", "crafter-moon", "--steps", "1024000"]),  # its 250 updates of 4096
            # ablation: Moon et al.'s PPO settings and heads on the small Nature CNN instead of their wide IMPALA CNN
            System("crafter_moon_nature_cnn", [*CRAFTER_CPU]),
        ],
    },
    # Which of Moon et al.'s ingredients buy crafter-cpu's score: each system leaves one out (one seed each).
    "crafter-ablations": {
        "metric": "crafter_score",
        "evaluate_episodes": 100,
        "systems": [
            System("crafter_moon_nature_cnn", [*CRAFTER_CPU]),  # crafter-cpu itself (bench/results/crafter-1024k)
            System("no_feature_norm", [*CRAFTER_CPU, "--no-feature-norm"]),  # no LayerNorm on the features
            System("no_value_norm", [*CRAFTER_CPU, "--no-value-norm"]),  # raw return targets
            System("minibatch_adv_norm", [*CRAFTER_CPU, "--adv-norm", "minibatch"]),  # per minibatch, not per batch
            System("gamma_099_lambda_095", [*CRAFTER_CPU, "--gamma", "0.99", "--gae-lambda", "0.95"]),
            System("rollout_32x128", [*CRAFTER_CPU, "--num-envs", "32", "--num-steps", "128"]),  # same batch, shorter
            System("epochs_4", [*CRAFTER_CPU, "--update-epochs", "4"]),
        ],
    },
    # Network width at Moon et al.'s PPO settings: does a narrow IMPALA ResNet buy most of their wide one's score
    # at a CPU's cost? The Nature CNN (crafter-cpu), IMPALA [16, 32, 32] (the Procgen paper's), and their
    # IMPALA [64, 128, 128] with GroupNorm (crafter-moon); the same LayerNorm -> dense 1024 trunk and heads.
    "crafter-width": {
        "metric": "crafter_score",
        "evaluate_episodes": 100,
        "systems": [
            System("crafter_moon_nature_cnn", [*CRAFTER_CPU]),  # crafter-cpu itself (bench/results/crafter-1024k)
            System("impala_cnn", ["--preset", "crafter-moon", "--backbone", "impala_cnn", "--steps", "1024000"]),
            System("crafter_moon", ["--preset", "crafter-moon", "--steps", "1024000"]),  # (crafter-1024k too)
        ],
    },
    # A CPU's budget (issue 37): Moon et al.'s PPO on networks with at most a third of crafter-moon's arithmetic
    # per env step (9.2 GFLOP, torch.utils.flop_counter), screened at 500k against crafter-moon's 10.14 / 10.98.
    "crafter-budget": {
        "metric": "crafter_score",
        "evaluate_episodes": 100,
        "systems": [
            System("crafter_moon", ["--preset", "crafter-moon", "--steps", "1024000"]),  # (crafter-1024k)
            # [32, 64, 64]: half the widths, a quarter of the arithmetic (2.3 GFLOP per env step)
            System(
                "moon_half", ["--preset", "crafter-moon", "--backbone", "impala_cnn_moon_half", "--steps", "1024000"]
            ),
        ],
    },
    # Can frozen pretrained features compete when taken early, at native resolution (PIE-G, Yuan et al. 2022)?
    "crafter-frozen-levels": {
        "metric": "crafter_score",
        "evaluate_episodes": 100,
        "systems": [
            System("crafter_moon_nature_cnn", [*CRAFTER_CPU]),  # crafter-cpu itself (bench/results/crafter-1024k)
            System("lite0_level1_frozen", [*CRAFTER_CPU, *LITE0_FROZEN, "--feature-level", "1"]),
            System("lite0_level2_frozen", [*CRAFTER_CPU, *LITE0_FROZEN, "--feature-level", "2"]),
        ],
    },
    "procgen-starpilot": {
        "metric": "return_last_100",
        "evaluate_episodes": 100,  # evaluate.py on the last checkpoint: training levels against unseen levels
        "systems": [
            System("pixelppo", ["--preset", "procgen-official", "--env", "procgen/starpilot"]),
            System(
                "pixelppo_drac", ["--preset", "procgen-official", "--env", "procgen/starpilot", "--augment", "crop"]
            ),
            System("plain_loop", baseline=["procgen", "--game", "starpilot"], batch=64 * 256),
        ],
    },
}


def lite0_weights() -> str:
    """EfficientNet-Lite0's ImageNet weights under timm names (weights.py), written once."""
    path = LOGS / "tf_efficientnet_lite0_imagenet.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(ROOT / "weights.py"), "efficientnet_lite0", str(path)], check=True)
    return str(path)


def rolling_last_100(episodes: list, steps: list[int]) -> list[float | None]:
    """Mean return of the last 100 episodes finished by each step; episodes are [step, return, ...]."""
    ends = np.array([e[0] for e in episodes])
    returns = np.array([e[1] for e in episodes])
    out = []
    for step in steps:
        done = returns[ends <= step][-100:]
        out.append(float(done.mean()) if len(done) else None)
    return out


def final_value(curve: list) -> float | None:
    """The metric at the last step, None before the first episode ends."""
    return curve[-1][1] if curve else None


def run_pixelppo(system: System, seed: int, steps: int, logdir: Path, threads: str, metric: str) -> dict:
    args = [a if a != "LITE0" else lite0_weights() for a in system.train_args]
    if (logdir / "last.pth").exists():
        cmd = ["--resume", str(logdir), "--stop-after", str(steps)]
    else:
        cmd = [*args, *QUIET, "--seed", str(seed), "--stop-after", str(steps), "--logdir", str(logdir)]
        if "--steps" not in args:
            cmd += ["--steps", str(steps)]
    env = os.environ | {"OMP_NUM_THREADS": threads}
    with open(logdir.parent / f"{logdir.name}.log", "a") as log:
        code = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *cmd], stdout=log, stderr=log, env=env
        ).returncode
    if code in STOP_CODES:
        raise RunStopped(code)
    if code != 0:
        raise subprocess.CalledProcessError(code, ["train.py", *cmd])
    return read_pixelppo(logdir, metric)


class RunStopped(Exception):
    """train.py was stopped by a signal: its checkpoint is saved and the same command continues it."""


def read_pixelppo(logdir: Path, metric: str) -> dict:
    """A pixelppo run's curve and figures as its logdir has them (finished, or stopped with a summary)."""
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    key = {"return_last_100": "charts/return_last_100", "crafter_score": "crafter/score"}[metric]
    curve = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    eval_key = {"return_last_100": "eval/mean_return", "crafter_score": "eval/crafter_score"}[metric]
    evaluations = [(r["step"], r[eval_key]) for r in rows if r.get(eval_key) is not None]  # the in-training ones
    summary = json.loads((logdir / "summary.json").read_text())
    return {
        "steps": summary["global_step"],
        "sps": summary["sps"],
        "precision": summary["precision_used"],  # the last process's; each stretch's in "stretches"
        "stretches": summary.get("stretches", []),  # {from_step, to_step, seconds, device, precision} per process
        "curve": curve,
        "final": final_value(curve),
        "eval_curve": evaluations,
    }


def run_baseline(system: System, seed: int, steps: int, logdir: Path, threads: str, metric: str) -> dict:
    updates = -(-steps // system.batch)
    cmd = [sys.executable, str(ROOT / "bench" / "baselines.py"), *system.baseline, "--updates", str(updates)]
    env = os.environ | {"OMP_NUM_THREADS": threads}
    out = subprocess.run([*cmd, "--seed", str(seed)], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "baseline.json").write_text(json.dumps(result))
    grid = list(range(system.batch, result["steps"] + 1, system.batch))
    curve = [(s, v) for s, v in zip(grid, rolling_last_100(result["episodes"], grid), strict=True) if v is not None]
    return {"steps": result["steps"], "sps": result["steps_per_s"], "curve": curve, "final": final_value(curve)}


def evaluate_sets(logdir: Path, episodes: int, threads: str) -> tuple[dict[str, float], dict[str, dict]]:
    """evaluate.py on the run's last checkpoint -> mean return per level set (Procgen: train and test), and for
    Crafter the score and per-achievement success rates (%) of those episodes, as papers' tables report them."""
    out = logdir / "evaluation.json"
    cmd = [str(ROOT / "evaluate.py"), str(logdir / "last.pth"), "--episodes", str(episodes), "--json", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": threads}
    with open(logdir.parent / f"{logdir.name}.log", "a") as log:
        subprocess.run([sys.executable, *cmd], stdout=log, stderr=log, env=env, check=True)
    rows = json.loads(out.read_text())
    rows = rows if isinstance(rows, list) else [rows]
    achievements = {
        row["set"]: {"crafter_score": row["crafter_score"], "success_rates": row["success_rates"]}
        for row in rows
        if "crafter_score" in row
    }
    return {row["set"]: row["mean_return"] for row in rows}, achievements


def carried(logdir: Path, carry: Path) -> Path:
    """Where a run's files are carried: carry/<experiment>/<run>/."""
    return carry / logdir.parent.name / logdir.name


def carry_out(logdir: Path, carry: Path) -> None:
    """Copy a stopped run's files (not folders, not NOT_CARRIED) to its carried folder, replacing the previous
    copy only once the new one is complete."""
    dest = carried(logdir, carry)
    staging = dest.with_name(f"{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in sorted(logdir.iterdir()):
        if path.is_file() and path.name not in NOT_CARRIED:
            shutil.copy2(path, staging / path.name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def carry_in(logdir: Path, carry: Path) -> bool:
    """Lay a carried run into its logdir when the logdir has no last.pth of its own; -> whether it did."""
    source = carried(logdir, carry)
    if (logdir / "last.pth").exists() or not (source / "last.pth").exists():
        return False
    logdir.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        shutil.copy2(path, logdir / path.name)
    return True


def run_one(
    system: System,
    seed: int,
    steps: int,
    folder: Path,
    threads: str,
    experiment: dict,
    partial: bool = False,
    carry: Path | None = None,
) -> dict | None:
    logdir = folder / f"{system.name}_seed{seed}"
    done = logdir / "result.json"
    if done.exists() and json.loads(done.read_text())["steps"] >= steps:
        return json.loads(done.read_text())
    if carry and carry_in(logdir, carry):
        print(f"{logdir.name}: continuing from {carried(logdir, carry)}", flush=True)
    so_far = {"system": system.name, "seed": seed, "partial": True}  # a stopped run as it stands
    if partial:  # to commit its curve so far; a run not started yet has none
        if not (logdir / "summary.json").exists():
            return None
        if carry:
            carry_out(logdir, carry)
        return so_far | read_pixelppo(logdir, experiment["metric"])
    print(f"running {logdir.name} for {steps:,} steps", flush=True)
    runner = run_pixelppo if system.train_args is not None else run_baseline
    try:
        result = {"system": system.name, "seed": seed} | runner(
            system, seed, steps, logdir, threads, experiment["metric"]
        )
    except RunStopped:
        result = so_far | read_pixelppo(logdir, experiment["metric"])
        if carry:
            carry_out(logdir, carry)
        print(f"{logdir.name} stopped at {result['steps']:,} steps; the same command continues it", flush=True)
        return result
    if system.train_args is not None and experiment.get("evaluate_episodes"):
        result["evaluate"], achievements = evaluate_sets(logdir, experiment["evaluate_episodes"], threads)
        if achievements:
            result["evaluate_achievements"] = achievements
    done.write_text(json.dumps(result))
    if carry:
        shutil.rmtree(carried(logdir, carry), ignore_errors=True)  # the results file holds it now
    final = "n/a" if result["final"] is None else f"{result['final']:.2f}"
    print(f"{logdir.name}: {final} at {result['steps']:,} steps ({result['sps']:.0f} sps)", flush=True)
    return result


def reuse_runs(path: Path, systems: list[System], seeds: list[int], steps: int, folder: Path) -> None:
    """Finished runs of `systems` from a committed results file stand in for running them again, cut at the
    first point at or past `steps`: train.py on the CPU is deterministic (the same command reproduces a run's
    curve exactly), and runs from before --precision existed ran in fp32."""
    names = {s.name for s in systems}
    for run in json.loads(path.read_text())["runs"]:
        if run["system"] not in names or run["seed"] not in seeds or run["steps"] < steps:
            continue
        reached = next(i for i, (step, _) in enumerate(run["curve"]) if step >= steps)
        curve = run["curve"][: reached + 1]
        result = run | {"steps": curve[-1][0], "curve": curve, "final": final_value(curve), "reused_from": path.name}
        if "eval_curve" in run:
            result["eval_curve"] = [point for point in run["eval_curve"] if point[0] <= curve[-1][0]]
        if curve[-1][0] < run["steps"]:  # evaluate.py scored the agent at the run's end, not at the cut
            result = {k: v for k, v in result.items() if k not in ("evaluate", "evaluate_achievements")}
        result.setdefault("precision", "fp32")
        logdir = folder / f"{run['system']}_seed{run['seed']}"
        logdir.mkdir(parents=True, exist_ok=True)
        if not (logdir / "result.json").exists():
            (logdir / "result.json").write_text(json.dumps(result))


def window_means(curve: list, steps: int, parts: int = 4) -> list[float | None]:
    """The metric averaged over the curve's points in each of `parts` equal windows of the budget, (i * steps /
    parts, (i + 1) * steps / parts]: at equal steps, and steadier than one point of a noisy curve. None for a
    window the run has not passed the end of, or with no point in it."""
    last = curve[-1][0] if curve else 0
    means = []
    for i in range(parts):
        low, high = i * steps / parts, (i + 1) * steps / parts
        values = [value for step, value in curve if low < step <= high]
        means.append(float(np.mean(values)) if values and last >= high else None)
    return means


def budget_name(steps: int) -> str:
    """300000 -> '300k', 1000000 -> '1M', 256 -> '256'."""
    if steps % 1_000_000 == 0:
        return f"{steps // 1_000_000}M"
    return f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)


def bootstrap_ci(values: list[float], reps: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over runs (rliable's stratified bootstrap on one task: seeds
    resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(np.asarray(values, dtype=float), size=(reps, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(name: str, runs: list[dict], steps: int) -> dict:
    table = {}
    for system in dict.fromkeys(r["system"] for r in runs):
        finals = [r["final"] for r in runs if r["system"] == system]
        done = [f for f in finals if f is not None] or [float("nan")]  # nan: no episode finished yet
        table[system] = {"mean": float(np.mean(done)), "min": min(done), "max": max(done), "runs": finals}
        if len(done) >= 3:  # an interval only where there are 3 seeds or more
            table[system]["ci95"] = bootstrap_ci(done)
        table[system]["windows"] = summarize_windows([r["curve"] for r in runs if r["system"] == system], steps)
        evaluations = [r["evaluate"] for r in runs if r["system"] == system and "evaluate" in r]
        for level_set in evaluations[0] if evaluations else []:
            values = [e[level_set] for e in evaluations]
            table[system][f"evaluate_{level_set}"] = {"mean": float(np.mean(values)), "runs": values}
        scored = [r["evaluate_achievements"] for r in runs if r["system"] == system and "evaluate_achievements" in r]
        for level_set in scored[0] if scored else []:
            values = [e[level_set]["crafter_score"] for e in scored]
            table[system][f"evaluate_{level_set}_crafter_score"] = {"mean": float(np.mean(values)), "runs": values}
    return {"experiment": name, "metric": EXPERIMENTS[name]["metric"], "steps": steps, "table": table, "runs": runs}


def summarize_windows(curves: list[list], steps: int, parts: int = 4) -> list[dict]:
    """Each window of the budget (window_means): its steps, every run's mean and their mean over the runs that
    passed it."""
    per_run = [window_means(curve, steps, parts) for curve in curves]
    windows = []
    for i in range(parts):
        values = [means[i] for means in per_run]
        done = [v for v in values if v is not None]
        window = {"from": i * steps // parts, "to": (i + 1) * steps // parts, "runs": values}
        windows.append(window | {"mean": float(np.mean(done)) if done else None})
    return windows


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in summary["table"]:
        for i, run in enumerate(r for r in summary["runs"] if r["system"] == system and r["curve"]):
            steps, values = zip(*run["curve"], strict=True)
            color = f"C{list(summary['table']).index(system)}"
            ax.plot(steps, values, color=color, alpha=0.8, label=system if i == 0 else None)
    for label, value in REFERENCES.get(summary["experiment"].split("-")[0], []):
        ax.axhline(value, ls="--", lw=0.8, color="gray")
        ax.text(0, value, label, fontsize=7, va="bottom")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(summary["metric"].replace("_", " "))
    so_far = " (the runs so far)" if any(r.get("partial") for r in summary["runs"]) else ""
    ax.set_title(f"{summary['experiment']}: every seed, {summary['steps']:,} steps{so_far}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, required=True, help="environment steps per run")
    parser.add_argument("--systems", nargs="*", help="only these systems (default: all of the experiment)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each gets cores / parallel threads)")
    parser.add_argument("--reuse", type=Path, nargs="*", default=[], help="results files whose runs stand in for these")
    parser.add_argument("--partial", action="store_true", help="write the stopped runs' curves so far, train nothing")
    parser.add_argument("--carry", type=Path, help="keep stopped runs' files here and continue runs from them")
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.experiment]
    systems = [s for s in experiment["systems"] if not args.systems or s.name in args.systems]
    folder = LOGS / args.experiment
    folder.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // args.parallel))
    for path in args.reuse:
        reuse_runs(path, systems, args.seeds, args.steps, folder)
    jobs = [(system, seed) for seed in args.seeds for system in systems]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(
            pool.map(lambda job: run_one(*job, args.steps, folder, threads, experiment, args.partial, args.carry), jobs)
        )
    runs = [run for run in runs if run is not None]
    summary = summarize(args.experiment, runs, args.steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = args.partial or any(run.get("partial") for run in runs)  # or a run stopped by a signal
    out = RESULTS / f"{args.experiment}-{budget_name(args.steps)}{'-partial' if partial else ''}"
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    plot(summary, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in summary["table"].items()}, indent=1))
    return summary


if __name__ == "__main__":
    main()
