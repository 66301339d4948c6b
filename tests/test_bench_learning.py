"""bench/learning.py end to end on a tiny Procgen system: train, continue with --resume, evaluate.py, summarize."""

import json
import sys

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


def test_experiment_trains_continues_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    experiment = {"metric": "return_last_100", "evaluate_episodes": 2, "systems": [learning.System("tiny", TINY)]}
    monkeypatch.setitem(learning.EXPERIMENTS, "tiny", experiment)

    first = learning.main(["tiny", "--seeds", "3", "--steps", "128"])
    assert first["runs"][0]["steps"] == 128
    summary = learning.main(["tiny", "--seeds", "3", "--steps", "256"])  # continues the same run with --resume

    run = summary["runs"][0]
    assert run["steps"] == 256 and run["seed"] == 3
    assert set(run["evaluate"]) == {"train", "test"}  # evaluate.py: training levels and unseen levels
    log = (tmp_path / "logs" / "tiny" / "tiny_seed3.log").read_text()
    assert "resuming" in log and "at step 128" in log
    saved = json.loads((tmp_path / "results" / "tiny-256.json").read_text())
    assert saved["table"]["tiny"]["evaluate_test"]["runs"] == [run["evaluate"]["test"]]
    assert (tmp_path / "results" / "tiny-256.png").stat().st_size > 0
