"""torchrun: ranks train one model (gloo on the CPU here); resume, stop and crash behave as in one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

import checkpoint
from agent import PPO
from buffer import RolloutBuffer
from config import Config
from distributed import Ranks
from policy import ActorCritic, PolicySpec

ROOT = Path(__file__).resolve().parents[1]
T, N, SHAPE = 8, 4, (3, 16, 16)
CFG = dict(update_epochs=2, num_minibatches=1, adv_norm="none", lr=1e-3)


def global_rollout() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "obs": torch.randint(0, 255, (T, N, *SHAPE), dtype=torch.uint8, generator=g),
        "actions": torch.randint(0, 5, (T, N), generator=g),
        "advantages": torch.randn(T, N, generator=g),
        "returns": torch.randn(T, N, generator=g),
    }


def updated_policy(envs: slice, ranks: Ranks | None = None) -> ActorCritic:
    """One PPO update on the rollout's `envs`, from the same initial policy."""
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", SHAPE, 3, 5, 16, freeze_backbone=False))
    data = {k: v[:, envs] for k, v in global_rollout().items()}
    n = data["actions"].shape[1]
    buffer = RolloutBuffer(T, n, SHAPE, torch.device("cpu"))
    buffer.inputs, buffer.actions = data["obs"], data["actions"]
    buffer.advantages, buffer.returns = data["advantages"], data["returns"]
    with torch.no_grad():
        flat = data["obs"].flatten(0, 1)
        logprob, _, value = policy.evaluate_actions(policy.features(flat), data["actions"].flatten())
    buffer.logprobs, buffer.values = logprob.view(T, n), value.view(T, n)
    PPO(policy, Config(**CFG), seed=1, ranks=ranks).update(buffer)
    return policy


def rank_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    ranks = Ranks()
    ranks.start(torch.device("cpu"), timeout_minutes=2)
    per_rank = N // world
    policy = updated_policy(slice(rank * per_rank, (rank + 1) * per_rank), ranks)
    torch.save(policy.state_dict(), Path(out) / f"rank{rank}.pt")
    ranks.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_what_one_process_trains_on_the_whole_batch(tmp_path):
    """2 ranks x 2 envs with averaged gradients == 1 process x 4 envs on the same global batch (float32
    tolerance: the sums run in another order); the ranks' parameters are bitwise identical."""
    mp.start_processes(rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = updated_policy(slice(0, N)).state_dict()
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], single[key], atol=2e-5, rtol=1e-4, msg=key)
    initial = ActorCritic(PolicySpec("impala_cnn", SHAPE, 3, 5, 16, freeze_backbone=False)).state_dict()
    assert any(not torch.equal(initial[k], single[k]) for k in single)  # the update did move the weights


TINY = ["--env", "procgen/bigfish", "--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone",
        "--head-hidden", "16", "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "2", "--eval-episodes", "2", "--eval-envs", "2", "--no-eval-video", "--wandb-mode",
        "disabled", "--device", "cpu", "--history-length", "2", "--progress-interval", "1"]  # fmt: skip


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "train.py"), *args]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )


def test_torchrun_trains_resumes_and_refuses_another_world_size(tmp_path):
    """With a frozen backbone's feature cache and a recurrent core, whose states travel in the checkpoint."""
    logdir = tmp_path / "run_1"
    recurrent_frozen = ["--recurrent", "gru", "--recurrent-size", "16", "--freeze-backbone"]  # the cache, the core
    first = run(torchrun(*TINY, *recurrent_frozen, "--steps", "128", "--eval-interval", "64", "--logdir", str(logdir)))
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("pixelppo: procgen/bigfish") == 1 and "x 2 processes" in first.stdout
    saved = checkpoint.load_checkpoint(logdir / "last.pth")
    assert saved["global_step"] == 128 and len(saved["resume"]["ranks"]) == 2  # 2 updates of 2 ranks x 2 x 16
    first_obs = [r["obs"] for r in saved["resume"]["ranks"]]
    assert not torch.equal(*first_obs)  # each rank plays its own levels
    steps = [
        int(line.split('"step": ')[1].split(",")[0]) for line in (logdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert sorted(set(steps)) == [64, 128]
    again = run(torchrun("--resume", str(logdir), "--steps", "192"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert checkpoint.load_checkpoint(logdir / "last.pth")["global_step"] == 192
    alone = run([sys.executable, str(ROOT / "train.py"), "--resume", str(logdir), "--steps", "256"])
    assert alone.returncode == 2 and "written by 2 process(es)" in alone.stderr


def worker_pids(launcher: int) -> list[int]:
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [int(pid) for pid in children]


def start_long_run(logdir: Path) -> subprocess.Popen:
    cmd = torchrun(*TINY, "--steps", "10000000", "--eval-interval", "64", "--logdir", str(logdir))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.time() + 180
    while not (logdir / "last.pth").exists() and time.time() < deadline:  # the first evaluation has saved
        time.sleep(0.5)
    assert (logdir / "last.pth").exists()
    return proc


def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(tmp_path):
    logdir = tmp_path / "run_1"
    proc = start_long_run(logdir)
    before = checkpoint.load_checkpoint(logdir / "last.pth")["global_step"]
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "stopped (SIGTERM)" in out and proc.returncode != 0
    saved = checkpoint.load_checkpoint(logdir / "last.pth")
    assert saved["global_step"] >= before and len(saved["resume"]["ranks"]) == 2


def test_a_killed_rank_ends_the_job_with_the_checkpoint_intact(tmp_path):
    logdir = tmp_path / "run_1"
    proc = start_long_run(logdir)
    killed = time.time()
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - killed < 120
    assert checkpoint.load_checkpoint(logdir / "last.pth")["global_step"] > 0
