"""Never lose a run: kill -9 at random moments, exact resume, signals, crashed workers, NaNs, bad
checkpoints, unwritable logdirs, full disks and unreachable wandb, with real processes."""

import collections
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from faulty_games import raising_crafter

import agent
import checkpoint
import train
from config import Config
from env import make_vec_env
from env_crafter import CrafterUnpickler, CrafterVecEnv, InsertionOrderedSet
from policy import ActorCritic, PolicySpec
from vecenv import EnvCrashError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone", "--head-hidden", "16",
        "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2", "--eval-episodes", "2",
        "--eval-envs", "2", "--wandb-mode", "disabled"]  # fmt: skip
PROCGEN = ["--env", "procgen/bigfish", "--num-envs", "4", "--history-length", "2"]
CRAFTER = ["--env", "crafter", "--num-envs", "2", "--history-length", "4"]  # frame stacks in the saved state


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def run_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, **(env or {})})  # fmt: skip


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("game", ["procgen", "crafter", "procgen-lstm"])
def test_resume_at_an_update_boundary_gives_the_same_weights(game, tmp_path):
    """Also with a recurrent policy, whose state in the middle of episodes travels in the checkpoint."""
    env_args = PROCGEN if game.startswith("procgen") else CRAFTER
    if game == "procgen-lstm":
        env_args = [*env_args, "--recurrent", "lstm", "--recurrent-size", "16"]
    args = [*TINY, *env_args, "--steps", "128" if game == "crafter" else "256", "--eval-interval", "64"]
    full = tmp_path / "full_1"
    assert run_train(*args, "--logdir", str(full)).returncode == 0
    split = tmp_path / "split_1"
    first = run_train(*args, "--logdir", str(split), "--stop-after", "32" if game == "crafter" else "64")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "continue with --resume" in first.stdout
    second = run_train("--resume", str(split))
    assert second.returncode == 0, second.stderr[-2000:]
    assert_same_weights(full / "last.pth", split / "last.pth")
    assert_same_weights(full / "best_model.pth", split / "best_model.pth")
    full_steps = [json.loads(line)["step"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    split_steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert split_steps == full_steps  # appended, no duplicate or missing steps
    assert json.loads((split / "eval_stats.json").read_text())["step"] == json.loads(
        (full / "eval_stats.json").read_text())["step"]  # fmt: skip


def test_resume_refuses_changed_settings_and_bad_checkpoints(tmp_path, capsys):
    logdir = tmp_path / "run_1"
    assert run_train(*TINY, *PROCGEN, "--steps", "64", "--eval-interval", "64", "--logdir", str(logdir)).returncode == 0
    assert train.main(["--resume", str(logdir), "--lr", "0.1"]) == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes((logdir / "last.pth").read_bytes()[:1000])
    assert train.main(["--resume", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupted" in err and "\n" not in err


def test_kill_9_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    """Save after every update (about every 50 ms) and kill -9 the trainer at random instants, resuming
    each time; every checkpoint on disk must always load, and the run must finish."""
    trials = int(os.environ.get("PIXELPPO_KILL_TRIALS", "10"))
    logdir = tmp_path / "run_1"
    args = [*TINY, *PROCGEN, "--steps", "100000", "--eval-interval", "2048", "--save-interval", "0.0001"]
    rng = random.Random(0)
    survived = 0
    cmd = train_cmd(*args, "--logdir", str(logdir))
    for _ in range(trials):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.time() + 60
        while not (logdir / "last.pth").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in logdir.glob("*.pth"):
            checkpoint.load_checkpoint(path)  # raises if a file is truncated or corrupted
        survived += 1
        cmd = train_cmd("--resume", str(logdir))
    assert survived == trials
    final = run_train("--resume", str(logdir), "--steps", str(checkpoint.load_checkpoint(logdir / "last.pth")[
        "global_step"] + 64))  # fmt: skip
    assert final.returncode == 0, final.stderr[-2000:]
    assert not list(logdir.glob(".*.tmp-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_and_exit_within_seconds(sig, tmp_path):
    logdir = tmp_path / "run_1"
    args = [*TINY, *CRAFTER, "--steps", "1000000", "--logdir", str(logdir),
            "--progress-interval", "1"]  # fmt: skip
    proc = subprocess.Popen(train_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0].replace(",", "")) > 32:
            break  # the second rollout has begun: the first update is done
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.time() - sent < 10
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"stopped ({signal.Signals(sig).name})" in out
    saved = checkpoint.load_checkpoint(logdir / "last.pth")
    assert saved["global_step"] > 0 and saved["resume"]["ranks"][0]["env_state"] is not None
    deadline = time.time() + 5  # orphaned children are reaped by init shortly after the exit
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    assert children and not any(Path(f"/proc/{pid}").exists() for pid in children)  # workers closed


def test_killed_worker_is_restarted_and_reported():
    with CrafterVecEnv(4, seed=0, history_length=2, num_workers=2, max_crashes=1) as envs:
        obs = envs.reset()
        for _ in range(3):
            obs = envs.step(np.zeros(4, int)).obs
        envs.procs[1].kill()
        envs.procs[1].join()
        with pytest.warns(UserWarning, match=r"worker 1 \(envs 2-3\) crashed: worker process died"):
            result = envs.step(np.zeros(4, int))
        assert result.truncated[2:].all() and not result.truncated[:2].any()
        np.testing.assert_array_equal(result.final_obs[2:, :3], obs[2:, 3:])  # the cut episodes' last frames
        assert not result.obs[2:, :3].any()  # new episodes
        assert not result.episodes  # cut episodes are not reported as finished games
        envs.step(np.zeros(4, int))  # the restarted worker plays on
        envs.procs[0].kill()
        envs.procs[0].join()
        with pytest.raises(EnvCrashError, match="more than the allowed 1"):
            envs.step(np.zeros(4, int))


def test_a_game_that_raises_is_reported_with_its_exception():
    with CrafterVecEnv(2, seed=0, history_length=1, num_workers=1, max_crashes=5, env_fn=raising_crafter) as envs:
        envs.reset()
        for _ in range(4):
            envs.step(np.zeros(2, int))
        with pytest.warns(UserWarning, match=r"envs 0-1\) crashed: ValueError: the game broke; restarting"):
            result = envs.step(np.zeros(2, int))
        assert result.truncated.all()
        assert envs.crashes == 1


def test_crafter_state_roundtrip_and_safe_unpickling():
    with make_vec_env("crafter", 2, seed=3, history_length=2) as a, make_vec_env("crafter", 2, 9, 2) as b:
        a.reset()
        for _ in range(20):
            a.step(np.arange(2))
        b.reset()
        obs_b = b.set_state(a.get_state())
        for _ in range(20):
            ra, rb = a.step(np.array([1, 3])), b.step(np.array([1, 3]))
            np.testing.assert_array_equal(ra.obs, rb.obs)
            np.testing.assert_array_equal(ra.rewards, rb.rewards)
        assert obs_b.shape == (2, 6, 64, 64)
        evil = a.get_state()
        evil["worlds"][0] = __import__("pickle").dumps(os.system)
        with pytest.raises(EnvCrashError, match="not allowed"):
            b._call(0, "set_state", evil["worlds"][0])


def test_crafter_states_saved_under_numpy_1_or_2_load_under_either():
    """A Crafter state names numpy's modules as the numpy that saved it did (numpy.core or numpy._core): a run saved
    on one machine resumes on another (the GPU image's numpy 2 could not resume a run saved under numpy 1.26)."""
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    saved = pickle.dumps(
        array, protocol=3
    )  # unframed; names its reconstructor in plain text: numpy.core or numpy._core
    for old, new in ((b"numpy._core.", b"numpy.core."), (b"numpy.core.", b"numpy._core.")):
        other_numpy = saved.replace(old, new)
        for data in (saved, other_numpy):
            np.testing.assert_array_equal(CrafterUnpickler(io.BytesIO(data)).load(), array)
    frombuffer = [
        CrafterUnpickler(io.BytesIO()).find_class(m, "_frombuffer")
        for m in ("numpy.core.numeric", "numpy._core.numeric")
    ]
    assert frombuffer[0] is frombuffer[1] and callable(frombuffer[0])
    assert CrafterUnpickler(io.BytesIO()).find_class("numpy.random._mt19937", "MT19937") is np.random.MT19937
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        CrafterUnpickler(io.BytesIO()).find_class("numpy._core.numeric", "fromfile")


def test_crafter_states_saved_before_the_env_split_still_load():
    """Crafter keeps each chunk's objects in an InsertionOrderedSet, which states saved before env.py was split
    name as env.InsertionOrderedSet: those checkpoints resume, the class now coming from env_crafter."""
    saved_by_env_py = (  # pickle.dumps(chunks, HIGHEST_PROTOCOL) by the code before the split, chunks as below
        b"\x80\x05\x95e\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bdefaultdict\x94\x93\x94"
        b"\x8c\x03env\x94\x8c\x13InsertionOrderedSet\x94\x93\x94\x85\x94R\x94(K\x00K\x00\x86\x94h\x05)\x81"
        b"\x94(K\x07NK\x03NuK\x01K\x02\x86\x94h\x05)\x81\x94K\x05Nsu."
    )
    chunks = collections.defaultdict(InsertionOrderedSet)
    chunks[(0, 0)].add(7)
    chunks[(0, 0)].add(3)
    chunks[(1, 2)].add(5)
    assert b"\x8c\x03env\x94\x8c\x13InsertionOrderedSet" in saved_by_env_py
    for data in (saved_by_env_py, pickle.dumps(chunks, protocol=pickle.HIGHEST_PROTOCOL)):
        loaded = CrafterUnpickler(io.BytesIO(data)).load()
        assert loaded.default_factory is InsertionOrderedSet and loaded == chunks
        assert all(type(objects) is InsertionOrderedSet for objects in loaded.values())
        assert list(loaded[(0, 0)]) == [7, 3]  # insertion order, as saved
    assert b"env_crafter" in pickle.dumps(chunks, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        CrafterUnpickler(io.BytesIO()).find_class("env", "make_vec_env")


def nan_loss(*args, **kwargs):
    loss, pieces = REAL_PPO_LOSS(*args, **kwargs)
    return loss * float("nan"), pieces


REAL_PPO_LOSS = agent.ppo_loss


def test_non_finite_losses_never_touch_the_weights():
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=16, freeze_backbone=False))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    from test_agent import filled_buffer

    cfg = Config(update_epochs=2, num_minibatches=2, adv_norm="minibatch")
    buf = filled_buffer(policy)
    buf.rewards[:] = float("nan")  # poisoned rewards spread NaN through GAE into every loss
    buf.compute_advantages(torch.zeros(4), 0.99, 0.95)
    stats = agent.PPO(policy, cfg).update(buf)
    assert stats["skipped_minibatches"] == stats["minibatches"] == 4
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k
    buf = filled_buffer(policy)
    buf.advantages[0, 0] = float("inf")  # one bad sample: only the minibatches holding it are skipped
    stats = agent.PPO(policy, Config(update_epochs=2, num_minibatches=4, adv_norm="none")).update(buf)
    assert stats["skipped_minibatches"] == 2 and stats["minibatches"] == 8
    assert all(torch.isfinite(v).all() for v in policy.state_dict().values())


def test_a_skipped_minibatch_leaves_the_value_statistics_as_they_were():
    """With --value-norm the targets' EWMA statistics were updated before the loss was checked, so a skipped
    minibatch still moved them."""
    torch.manual_seed(0)
    spec = PolicySpec("impala_cnn", (3, 16, 16), 3, 5, head_hidden=16, freeze_backbone=False, value_norm=True)
    policy = ActorCritic(spec)
    from test_agent import filled_buffer

    buf = filled_buffer(policy)
    normalizer = policy.value_normalizer
    before = {k: v.clone() for k, v in normalizer.state_dict().items()}
    buf.advantages[:] = float("nan")  # every minibatch's loss is non-finite, its returns are not
    stats = agent.PPO(policy, Config(update_epochs=2, num_minibatches=2, adv_norm="none")).update(buf)
    assert stats["skipped_minibatches"] == stats["minibatches"] == 4
    for k, v in normalizer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_repeated_non_finite_updates_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(agent, "ppo_loss", nan_loss)
    logdir = tmp_path / "run_1"
    code = train.main([*TINY, *PROCGEN, "--steps", "512", "--max-bad-updates", "2", "--logdir", str(logdir)])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 consecutive updates had only non-finite losses" in err and "saved" in err
    saved = checkpoint.load_checkpoint(logdir / "last.pth")
    assert saved["global_step"] == 128 and all(torch.isfinite(v).all() for v in saved["model"].values())


@pytest.mark.parametrize("logdir", ["file_as_parent", "/proc/pixelppo_run_1"])
def test_unwritable_logdir_fails_fast(logdir, tmp_path, capsys):
    if logdir == "file_as_parent":
        (tmp_path / "plain_file").write_text("x")
        logdir = str(tmp_path / "plain_file" / "run_1")
    start = time.time()
    assert train.main([*TINY, *PROCGEN, "--logdir", logdir]) == 2
    assert time.time() - start < 5  # before any env starts
    assert "cannot write to logdir" in capsys.readouterr().err


def test_full_disk_mid_run_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    logdir = tmp_path / "run_1"
    real_save = torch.save
    calls = {"n": 0}

    def save_until_disk_fills(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            f.write(b"partial data")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_disk_fills)
    args = [*TINY, *PROCGEN, "--steps", "256", "--eval-interval", "64", "--logdir", str(logdir)]
    with pytest.warns(UserWarning, match=r"could not write .*last.pth \(No space left on device\); the previous"):
        assert train.main(args) == 0  # training goes on
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(logdir / "last.pth")["global_step"] == 64  # the last good write
    assert not list(logdir.glob(".*.tmp-*"))


def test_unreachable_wandb_falls_back_to_offline(tmp_path):
    logdir = tmp_path / "run_1"
    args = [
        *TINY,
        *PROCGEN,
        "--steps",
        "64",
        "--eval-interval",
        "64",
        "--logdir",
        str(logdir),
        "--wandb-mode",
        "online",
    ]
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0" * 40}
    proc = run_train(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wandb server unreachable" in proc.stderr and proc.stderr.count("warning: wandb") == 1
    assert list((logdir / "wandb").glob("offline-run-*"))


def test_a_signal_during_an_update_stops_at_the_next_minibatch_and_resumes_exactly(tmp_path):
    """A long update (here seconds: 40 epochs of a tiny rollout) used to run to its end before the stop; now the
    run stops at the next minibatch, saves the weights of before the update with the rollout, and --resume
    repeats that update: the weights come out as in a run never stopped."""
    args = [*TINY, *PROCGEN, "--num-steps", "8", "--update-epochs", "40", "--num-minibatches", "4",
            "--steps", "64", "--eval-interval", "100000", "--no-eval-video"]  # fmt: skip
    full = tmp_path / "full_1"
    assert run_train(*args, "--logdir", str(full)).returncode == 0
    update_seconds = json.loads((full / "summary.json").read_text())["time_split_seconds"]["update"] / 2

    logdir = tmp_path / "run_1"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(*args, "--logdir", str(logdir)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("pixelppo:"):
            break  # training starts: a rollout of 32 steps, then the first update
    time.sleep(min(2.0, update_seconds / 4))
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped (SIGINT) at step 0" in out, err[-2000:]
    saved_after = (logdir / "last.pth").stat().st_mtime - sent
    assert saved_after < update_seconds / 3, (update_seconds, saved_after)  # not at the update's end
    saved = checkpoint.load_checkpoint(logdir / "last.pth")
    assert saved["global_step"] == 0 and saved["resume"]["ranks"][0]["pending_rollout"] is not None

    resumed = run_train("--resume", str(logdir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(full / "last.pth", logdir / "last.pth")
