"""bench/learning.py end to end on a tiny Procgen system: train, continue with --resume, evaluate.py, summarize."""

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import learning  # noqa: E402

TINY = ["--env", "procgen/starpilot", "--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone"]
TINY += ["--num-envs", "2", "--num-steps", "32", "--num-minibatches", "1", "--update-epochs", "1"]
TINY += ["--eval-interval", "100000", "--steps", "1000"]


def test_budget_names():
    assert [learning.budget_name(s) for s in (100_000, 300_000, 1_000_000, 2_500_000)] == [
        "100k",
        "300k",
        "1M",
        "2500k",
    ]
    assert learning.budget_name(256) == "256"


def test_rolling_last_100_counts_only_finished_episodes():
    episodes = [[10, 1.0], [20, 3.0]] + [[30, 0.0]] * 100
    assert learning.rolling_last_100(episodes, [5, 10, 25, 30]) == [None, 1.0, 2.0, 0.0]


def test_window_means_average_each_quarter_a_run_has_passed():
    curve = [(100, 1.0), (200, 3.0), (300, 5.0), (400, 6.0), (500, 7.0), (700, 9.0)]
    assert learning.window_means(curve, 800) == [2.0, 5.5, 7.0, None]  # (0, 200], (200, 400], (400, 600], ...
    assert learning.window_means(curve[:4], 800) == [2.0, 5.5, None, None]  # not past 600 yet
    windows = learning.summarize_windows([curve, curve[:4]], 800)
    assert [w["mean"] for w in windows] == [2.0, 5.5, 7.0, None]
    assert windows[2] == {"from": 400, "to": 600, "runs": [7.0, None], "mean": 7.0}


def test_bootstrap_interval_of_the_mean_over_seeds():
    """Every resample's mean lies between the smallest and largest run; a wider spread gives a wider interval; the
    interval holds the mean; 3 seeds or more get one in the table, 2 do not."""
    low, high = learning.bootstrap_ci([10.0, 11.0, 12.0, 13.0, 14.0])
    assert 10.0 <= low < 12.0 < high <= 14.0
    wide = learning.bootstrap_ci([6.0, 9.0, 12.0, 15.0, 18.0])
    assert wide[1] - wide[0] > 2 * (high - low)
    assert learning.bootstrap_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)
    runs = [{"system": "a", "final": v, "curve": [[100, v]]} for v in (10.0, 11.0, 12.0)]
    runs += [{"system": "b", "final": v, "curve": [[100, v]]} for v in (10.0, 11.0)]
    table = learning.summarize("crafter", runs, 100)["table"]
    assert table["a"]["ci95"] == learning.bootstrap_ci([10.0, 11.0, 12.0]) and "ci95" not in table["b"]


def test_experiment_trains_continues_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    experiment = {"metric": "return_last_100", "evaluate_episodes": 2, "systems": [learning.System("tiny", TINY)]}
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny", experiment)

    first = learning.main(["tiny", "--seeds", "3", "--steps", "128"])
    assert first["runs"][0]["steps"] == 128
    so_far = learning.main(["tiny", "--seeds", "3", "4", "--steps", "256", "--partial"])  # trains nothing
    (stopped,) = so_far["runs"]  # seed 4 has not started: left out
    assert stopped["seed"] == 3 and stopped["curve"] == first["runs"][0]["curve"] and stopped["partial"]
    assert (tmp_path / "results" / "tiny-256-partial.json").exists()
    summary = learning.main(["tiny", "--seeds", "3", "--steps", "256"])  # continues the same run with --resume

    run = summary["runs"][0]
    assert run["steps"] == 256 and run["seed"] == 3
    assert set(run["evaluate"]) == {"train", "test"}  # evaluate.py: training levels and unseen levels
    log = (tmp_path / "logs" / "tiny" / "tiny_seed3.log").read_text()
    assert "resuming" in log and "at step 128" in log
    saved = json.loads((tmp_path / "results" / "tiny-256.json").read_text())
    assert saved["table"]["tiny"]["evaluate_test"]["runs"] == [run["evaluate"]["test"]]
    assert (tmp_path / "results" / "tiny-256.png").stat().st_size > 0


def test_a_carried_run_continues_on_a_new_machine_as_it_would_have_on_the_old(tmp_path, monkeypatch):
    """--carry: a stopped run's files go to a folder that can be committed; a sitting whose logs are gone (a new
    machine) continues the run from there, exactly as the old logdir would have, and drops the copy at the end."""
    monkeypatch.setattr(learning, "LOGS", tmp_path / "old_machine")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny", {"metric": "return_last_100", "systems": [
        learning.System("tiny", TINY + ["--eval-interval", "64", "--eval-episodes", "1"])]})  # fmt: skip
    carried = tmp_path / "carried" / "tiny" / "tiny_seed3"
    learning.main(["tiny", "--seeds", "3", "--steps", "128"])
    learning.main(["tiny", "--seeds", "3", "--steps", "256", "--partial", "--carry", str(tmp_path / "carried")])
    assert (carried / "last.pth").exists() and (carried / "eval_stats.json").exists()
    assert not (carried / "best_model.pth").exists() and not (carried / "result.json").exists()
    (old,) = learning.main(["tiny", "--seeds", "3", "--steps", "256"])["runs"]  # the old machine goes on

    monkeypatch.setattr(learning, "LOGS", tmp_path / "new_machine")
    (new,) = learning.main(["tiny", "--seeds", "3", "--steps", "256", "--carry", str(tmp_path / "carried")])["runs"]
    assert "at step 128" in (tmp_path / "new_machine" / "tiny" / "tiny_seed3.log").read_text()
    assert new["steps"] == old["steps"] == 256 and new["curve"] == old["curve"]
    evaluations = [json.loads((m / "tiny" / "tiny_seed3" / "eval_stats.json").read_text())["step"]
                   for m in (tmp_path / "old_machine", tmp_path / "new_machine")]  # fmt: skip
    assert evaluations[0] == evaluations[1] and len(evaluations[0]) >= 3  # the history before the stop came along
    assert not carried.exists()  # finished: the results file holds the run now


def test_reused_runs_are_cut_at_the_budget_and_never_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny", {"metric": "return_last_100", "systems": [
        learning.System("tiny", TINY), learning.System("other", TINY)]})  # fmt: skip
    curve = [[64, 1.0], [128, 2.0], [192, 3.0], [256, 4.0]]
    committed = tmp_path / "tiny-256.json"
    committed.write_text(json.dumps({"runs": [
        {"system": "tiny", "seed": 3, "steps": 256, "sps": 50.0, "curve": curve, "final": 4.0,
         "evaluate": {"eval": 5.0}, "eval_curve": [[128, 2.5], [256, 4.5]]},
        {"system": "tiny", "seed": 4, "steps": 128, "sps": 50.0, "curve": curve[:2], "final": 2.0},  # too short
    ]}))  # fmt: skip

    def no_training(*args):
        raise AssertionError("a reused run was trained again")

    monkeypatch.setattr(learning, "run_pixelppo", no_training)
    summary = learning.main(["tiny", "--systems", "tiny", "--seeds", "3", "--steps", "150", "--reuse", str(committed)])
    (run,) = summary["runs"]
    assert run["curve"] == curve[:3] and run["final"] == 3.0 and run["steps"] == 192
    assert run["precision"] == "fp32" and run["reused_from"] == "tiny-256.json"
    assert "evaluate" not in run  # evaluate.py scored the agent at 256 steps, not at the cut
    assert run["eval_curve"] == [[128, 2.5]]  # the in-training evaluations up to the cut
    assert not (tmp_path / "logs" / "tiny" / "tiny_seed4").exists()
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs_full")
    (run,) = learning.main(["tiny", "--systems", "tiny", "--seeds", "3", "--steps", "256", "--reuse", str(committed)])[
        "runs"
    ]
    assert run["evaluate"] == {"eval": 5.0} and run["final"] == 4.0


def test_crafter_runs_report_score_and_achievement_rates_of_the_final_agent(tmp_path, monkeypatch):
    """As papers' tables do: the last checkpoint's mean return, Crafter score and per-achievement success rates
    over evaluate.py's episodes, beside the score over all training episodes."""
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    tiny = ["--env", "crafter", *TINY[2:], "--eval-interval", "64", "--eval-episodes", "1"]
    experiment = {"metric": "crafter_score", "evaluate_episodes": 2, "systems": [learning.System("tiny", tiny)]}
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny_crafter", experiment)
    summary = learning.main(["tiny_crafter", "--seeds", "3", "--steps", "64"])
    run = summary["runs"][0]
    (level_set,) = run["evaluate"]
    achievements = run["evaluate_achievements"][level_set]
    assert len(achievements["success_rates"]) == 22 and 0 <= achievements["crafter_score"] <= 100
    column = summary["table"]["tiny"][f"evaluate_{level_set}_crafter_score"]
    ((step, in_training_score),) = run["eval_curve"]  # the in-training evaluation at the end, scored as Crafter's
    assert step == 64 and 0 <= in_training_score <= 100
    assert column["runs"] == [achievements["crafter_score"]]


def test_a_run_stopped_by_a_signal_is_reported_and_its_curve_written_as_partial(tmp_path, monkeypatch, capsys):
    """SIGTERM to a train.py that bench/learning.py waits for: the run saves, the script says how far it got and
    writes the curves so far as <experiment>-<steps>-partial.json instead of failing with a traceback."""
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    experiment = {"metric": "return_last_100", "evaluate_episodes": 2, "systems": [learning.System("tiny", TINY)]}
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny", experiment)
    metrics = tmp_path / "logs" / "tiny" / "tiny_seed3" / "metrics.jsonl"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            learning.main, ["tiny", "--seeds", "3", "--steps", "1000000", "--carry", str(tmp_path / "carried")]
        )
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
            time.sleep(0.2)  # two updates logged
        (trainer,) = [pid for pid in children_of(os.getpid()) if "train.py" in cmdline(pid)]
        os.kill(trainer, signal.SIGTERM)
        summary = running.result(timeout=60)

    (run,) = summary["runs"]
    assert run["partial"] and 128 <= run["steps"] < 1_000_000 and "evaluate" not in run
    assert f"tiny_seed3 stopped at {run['steps']:,} steps" in capsys.readouterr().out
    assert (tmp_path / "results" / "tiny-1M-partial.json").exists()
    assert not (tmp_path / "results" / "tiny-1M.json").exists()
    assert not (tmp_path / "logs" / "tiny" / "tiny_seed3" / "result.json").exists()  # the same command continues
    assert (tmp_path / "carried" / "tiny" / "tiny_seed3" / "last.pth").exists()  # or, from the carried copy, another


def children_of(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
