"""A stop at any point resumes to what an unstopped run does: a signal during a rollout, an update, a mid-run or
the final evaluation, or a checkpoint write, and a SIGTERM to the whole process group, then `--resume`, give the
same weights, evaluations, best_model.pth and step count as a run never stopped (bit for bit on a CPU)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agent
import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone", "--head-hidden", "16",
        "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2", "--eval-episodes", "2",
        "--eval-envs", "2", "--wandb-mode", "disabled", "--no-eval-video", "--eval-interval", "64"]  # fmt: skip
PROCGEN = [*TINY, "--env", "procgen/bigfish", "--num-envs", "4", "--history-length", "2", "--steps", "256"]
CRAFTER = [*TINY, "--env", "crafter", "--num-envs", "2", "--history-length", "2", "--steps", "128"]


def signal_on_call(n: int, real, sig: int = signal.SIGINT):
    """`real`, wrapped to send this process `sig` as its n-th call begins (the signal lands inside the call)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    return wrapper


def run_files(logdir: Path) -> dict:
    """What a run must reproduce: weights of both checkpoints, step count, evaluations and logged steps."""
    saved = {name: torch.load(logdir / name, weights_only=True) for name in ("last.pth", "best_model.pth")}
    evaluations = json.loads((logdir / "eval_stats.json").read_text())
    return {
        "global_step": saved["last.pth"]["global_step"],
        "weights": {name: payload["model"] for name, payload in saved.items()},
        "eval_steps": evaluations["step"],
        "eval_returns": evaluations["returns"],
        "logged_steps": [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()],
        "finished": json.loads((logdir / "summary.json").read_text())["finished"],
    }


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = run_files(a), run_files(b)
    for name, weights in ra.pop("weights").items():
        other = rb["weights"][name]
        assert weights.keys() == other.keys()
        for k in weights:
            assert torch.equal(weights[k], other[k]), (name, k)
    rb.pop("weights")
    assert ra == rb


def stop_and_resume(args: list[str], logdir: Path, monkeypatch, trap, sig: int = signal.SIGINT) -> None:
    """Run with `trap(monkeypatch)` set (it sends the signal), check the run stopped on it, resume it to the end
    without the trap."""
    trap(monkeypatch)
    assert train.main([*args, "--logdir", str(logdir)]) == 128 + sig
    monkeypatch.undo()
    assert not json.loads((logdir / "summary.json").read_text())["finished"]
    assert train.main(["--resume", str(logdir)]) == 0
    first, second = json.loads((logdir / "summary.json").read_text())["stretches"]  # each process's, recorded
    assert first["from_step"] == 0 and first["to_step"] == second["from_step"]
    assert second["to_step"] == run_files(logdir)["global_step"] and first["precision"] == second["precision"]


@pytest.fixture(scope="module")
def unstopped(tmp_path_factory) -> dict[str, Path]:
    """The reference runs, never stopped."""
    runs = {}
    for name, args in (("procgen", PROCGEN), ("crafter", CRAFTER)):
        logdir = tmp_path_factory.mktemp(name) / "run_1"
        assert train.main([*args, "--logdir", str(logdir)]) == 0
        runs[name] = logdir
    return runs


def wrap_train_env_step(n: int, sig: int = signal.SIGINT):
    """A trap: the training envs' n-th step sends the signal (the rollout is cut inside that step)."""

    def trap(monkeypatch):
        real_make = train.make_train_env

        def make(cfg, rank=0):
            envs = real_make(cfg, rank)
            envs.step = signal_on_call(n, envs.step, sig)
            return envs

        monkeypatch.setattr(train, "make_train_env", make)

    return trap


@pytest.mark.parametrize("game", ["procgen", "crafter"])
def test_a_stop_during_a_rollout_keeps_its_steps_and_resumes_exactly(game, unstopped, tmp_path, monkeypatch):
    """Stopped 5 steps into the second rollout: those steps are saved with the games and learned from after the
    resume, where they used to be dropped (the envs had moved on, so the weights differed from an unstopped run)."""
    args = PROCGEN if game == "procgen" else CRAFTER
    logdir = tmp_path / "run_1"
    stop_and_resume(args, logdir, monkeypatch, wrap_train_env_step(16 + 5))
    assert_same_run(unstopped[game], logdir)


def test_the_saved_partial_rollout_holds_the_steps_played(unstopped, tmp_path, monkeypatch):
    logdir = tmp_path / "run_1"
    wrap_train_env_step(16 + 5)(monkeypatch)
    assert train.main([*PROCGEN, "--logdir", str(logdir)]) == 130
    saved = torch.load(logdir / "last.pth", weights_only=True)
    rank = saved["resume"]["ranks"][0]
    assert saved["global_step"] == 64 and rank["rollout_steps"] == 5 and rank["pending_rollout"] is not None


def test_a_stop_during_an_update_resumes_exactly(unstopped, tmp_path, monkeypatch):
    def trap(monkeypatch):  # the third update's second minibatch (2 epochs x 2 minibatches an update)
        monkeypatch.setattr(agent, "ppo_loss", signal_on_call(2 * 4 + 2, agent.ppo_loss))

    logdir = tmp_path / "run_1"
    stop_and_resume(PROCGEN, logdir, monkeypatch, trap)
    assert_same_run(unstopped["procgen"], logdir)


def test_a_stop_during_a_mid_run_evaluation_redoes_it_at_the_same_step(unstopped, tmp_path, monkeypatch):
    """The interrupted evaluation used to be skipped: evaluations at 64, 192, 256 instead of 64, 128, 192, 256."""

    def trap(monkeypatch):  # the second evaluation
        monkeypatch.setattr(train, "run_episodes", signal_on_call(2, train.run_episodes))

    logdir = tmp_path / "run_1"
    stop_and_resume(PROCGEN, logdir, monkeypatch, trap)
    assert run_files(logdir)["eval_steps"] == [64, 128, 192, 256]
    assert_same_run(unstopped["procgen"], logdir)


def test_a_stop_during_the_final_evaluation_redoes_it(tmp_path, monkeypatch):
    """Evaluating every 96 steps of 256 puts the final evaluation off the interval (at 128, 192 and the end, 256):
    a stop there used to leave the resumed run without it, and summary.json said finished."""
    args = [*PROCGEN, "--eval-interval", "96"]
    full = tmp_path / "full_1"
    assert train.main([*args, "--logdir", str(full)]) == 0

    def trap(monkeypatch):
        monkeypatch.setattr(train, "run_episodes", signal_on_call(3, train.run_episodes))

    logdir = tmp_path / "run_1"
    stop_and_resume(args, logdir, monkeypatch, trap)
    assert run_files(logdir)["eval_steps"] == [128, 192, 256]
    assert_same_run(full, logdir)


def test_a_stop_during_a_checkpoint_write_resumes_exactly(unstopped, tmp_path, monkeypatch):
    def trap(monkeypatch):  # the third write: best_model.pth or last.pth of the second evaluation
        monkeypatch.setattr(train, "save_checkpoint", signal_on_call(3, train.save_checkpoint, signal.SIGTERM))

    logdir = tmp_path / "run_1"
    stop_and_resume(PROCGEN, logdir, monkeypatch, trap, signal.SIGTERM)
    assert_same_run(unstopped["procgen"], logdir)


def test_sigterm_to_the_process_group_saves_the_games_and_resumes_exactly(unstopped, tmp_path):
    """What `timeout`, SLURM and `kill -TERM -<pgid>` send reaches the Crafter env workers too: they used to die,
    be restarted as crashed, and the checkpoint held the restarted workers' new games (or the save raced the
    dying workers and nothing was saved)."""
    logdir = tmp_path / "run_1"
    cmd = [sys.executable, str(ROOT / "train.py"), *CRAFTER, "--logdir", str(logdir), "--progress-interval", "0.01"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0].replace(",", "")) > 40:
            break  # inside the second rollout
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "crashed" not in err and "Traceback" not in err, err[-2000:]
    saved = torch.load(logdir / "last.pth", weights_only=True)
    assert saved["resume"]["ranks"][0]["env_state"] is not None
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(logdir)], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(unstopped["crafter"], logdir)
