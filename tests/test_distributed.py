"""torchrun: ranks train one model (gloo on the CPU here); resume, stop and crash behave as in one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from toy_env import GridGoalVecEnv

import agent
import checkpoint
import distributed
from agent import PPO
from buffer import RolloutBuffer
from config import Config
from distributed import Ranks
from errors import UsageError
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


def updated_policy(envs: slice, ranks: Ranks | None = None, **settings) -> tuple[ActorCritic, dict]:
    """One PPO update on the rollout's `envs`, from the same initial policy; -> the policy and the update's stats."""
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec("impala_cnn", SHAPE, 3, 5, head_hidden=16, freeze_backbone=False))
    data = {k: v[:, envs] for k, v in global_rollout().items()}
    n = data["actions"].shape[1]
    buffer = RolloutBuffer(T, n, SHAPE, torch.device("cpu"))
    buffer.inputs, buffer.actions = data["obs"], data["actions"]
    buffer.advantages, buffer.returns = data["advantages"], data["returns"]
    with torch.no_grad():
        flat = data["obs"].flatten(0, 1)
        logprob, _, value = policy.evaluate_actions(policy.features(flat), data["actions"].flatten())
    buffer.logprobs, buffer.values = logprob.view(T, n), value.view(T, n)
    stats = PPO(policy, Config(**(CFG | settings)), seed=1, ranks=ranks).update(buffer)
    return policy, stats


def rank_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    ranks = Ranks()
    ranks.start(torch.device("cpu"), timeout_minutes=2)
    per_rank = N // world
    policy, _ = updated_policy(slice(rank * per_rank, (rank + 1) * per_rank), ranks)
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
    single = updated_policy(slice(0, N))[0].state_dict()
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], single[key], atol=2e-5, rtol=1e-4, msg=key)
    initial = ActorCritic(PolicySpec("impala_cnn", SHAPE, 3, 5, head_hidden=16, freeze_backbone=False)).state_dict()
    assert any(not torch.equal(initial[k], single[k]) for k in single)  # the update did move the weights


def join(rank: int, world: int, port: int, timeout_minutes: float = 2) -> Ranks:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    ranks = Ranks()
    ranks.start(torch.device("cpu"), timeout_minutes)
    return ranks


def diverging_worker(rank: int, world: int, port: int, out: str, case: str) -> None:
    """One update in which the ranks' own minibatches would decide differently: `kl`, rank 0's approx KL is far
    above --target-kl and rank 1's is 0; `skip`, rank 1's first loss is NaN (its gradients are finite)."""
    ranks = join(rank, world, port, timeout_minutes=0.2)  # a rank left waiting fails within 12 s
    ppo_loss, calls = agent.ppo_loss, []

    def diverging_loss(*args):
        loss, pieces = ppo_loss(*args)
        calls.append(1)
        if case == "kl":
            pieces["approx_kl"] = torch.tensor(1.0 if rank == 0 else 0.0)
        if case == "skip" and rank == 1 and len(calls) == 1:
            loss = loss + torch.tensor(float("nan"))
        return loss, pieces

    agent.ppo_loss = diverging_loss
    per_rank = N // world
    settings = {"target_kl": 0.4, "update_epochs": 3} if case == "kl" else {}
    policy, stats = updated_policy(slice(rank * per_rank, (rank + 1) * per_rank), ranks, **settings)
    torch.save({"model": policy.state_dict(), "stats": stats}, Path(out) / f"rank{rank}.pt")
    ranks.close()


@pytest.mark.parametrize("case", ["kl", "skip"])
def test_ranks_decide_early_stops_and_skips_together(case, tmp_path):
    """--target-kl with 2 ranks used to hang (rank 0 stopped after one epoch, rank 1 went on) and a NaN loss on
    one rank skipped the minibatch there only: the ranks' weights parted. Both decisions are now global."""
    mp.start_processes(diverging_worker, args=(2, free_port(), str(tmp_path), case), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    assert rank0["stats"]["epochs"] == rank1["stats"]["epochs"] == (1 if case == "kl" else 2)
    assert rank0["stats"]["skipped_minibatches"] == rank1["stats"]["skipped_minibatches"] == int(case == "skip")


class SlowGrid(GridGoalVecEnv):
    """The grid game at 0.25 s a step: 4 episodes of 24 steps on 2 envs take 12 s, twice the group's timeout."""

    def step(self, actions):
        time.sleep(0.25)
        return super().step(actions)


def trainer_worker(rank: int, world: int, port: int, out: str) -> None:
    """A Trainer on each of 2 ranks, in a group made the way the CUDA path makes it (devices mapped to backends:
    "cpu:gloo" here, as NCCL needs a GPU): its minibatch order, then an evaluation twice as long as the timeout."""
    distributed.backend = lambda device: "cpu:gloo"
    join(rank, world, port, timeout_minutes=0.1)  # 6 s
    cfg = Config(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=0, num_envs=2, num_steps=8,
        num_minibatches=1, update_epochs=1, steps=64, eval_interval=16, eval_episodes=4, eval_envs=2,
        eval_video=False, wandb_mode="disabled", dist_timeout=0.1, seed=5, logdir=str(Path(out) / "run_1"),
    )  # fmt: skip
    import train

    trainer = train.Trainer(cfg, envs=GridGoalVecEnv(2, seed=rank), eval_envs=SlowGrid(2, limit=24, reachable=False))
    order = torch.randperm(16, generator=trainer.ppo.generator)
    assert trainer.train_one_update()
    start = time.time()
    trainer.evaluate()
    took = time.time() - start
    torch.save({"order": order, "best": trainer.state.best_score, "took": took}, Path(out) / f"rank{rank}.pt")
    trainer.close()
    trainer.ranks.close()


def test_ranks_draw_their_own_minibatches_and_wait_out_a_long_evaluation(tmp_path):
    mp.start_processes(trainer_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(rank0["order"], rank1["order"])  # each rank shuffles its own rollout its own way
    assert torch.equal(rank0["order"], torch.randperm(16, generator=torch.Generator().manual_seed(5)))  # = 1 process
    assert rank0["took"] > 10 and rank1["took"] > 10  # longer than the 6 s timeout, and nobody timed out
    assert rank0["best"] == rank1["best"] and np.isfinite(rank0["best"])


def test_process_group_serves_cpu_collectives_on_gpus_too():
    """On CUDA the loop's flags, reward statistics and object gathers stay CPU tensors: the group must have a
    CPU backend beside NCCL (an NCCL-only group failed at the first env step)."""
    assert distributed.backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert distributed.backend(torch.device("cpu")) == "gloo"


def mismatched_worker(rank: int, world: int, port: int, out: str) -> None:
    """Ranks whose settings resolved differently (as a node with a GPU and one without resolve the default recipe):
    every rank must stop at once with one error naming the keys, not hang or crash in the first broadcast."""
    ranks = join(rank, world, port, timeout_minutes=1)
    cfg = Config(
        backbone="impala_cnn", head_hidden=0, num_envs=2, num_steps=8, num_minibatches=1, steps=16, eval_video=False,
        wandb_mode="disabled", logdir=str(Path(out) / "run_1"), gamma=0.95 if rank == 0 else 0.99,
        trunk_hidden=1024 if rank == 0 else 0,
    )  # fmt: skip
    import train

    try:
        train.Trainer(cfg, envs=GridGoalVecEnv(2, seed=rank), eval_envs=GridGoalVecEnv(2, seed=9))
        message = "no error"
    except UsageError as e:
        message = str(e)
    Path(out, f"rank{rank}.txt").write_text(message)
    ranks.close()


def test_ranks_with_other_settings_stop_together_naming_the_keys(tmp_path):
    mp.start_processes(mismatched_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "rank(s) 1 resolved other settings than rank 0 (gamma, trunk_hidden)" in message, message
    assert not (tmp_path / "run_1").exists()  # stopped before anything was written


def test_checkpoints_gather_the_ranks_state_on_rank_0_only(tmp_path):
    """A procgen-official rollout kept for resume is ~200 MB a rank: only rank 0, which writes, receives them."""
    mp.start_processes(gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert (tmp_path / "rank0.txt").read_text() == "[{'rank': 0}, {'rank': 1}]"
    assert (tmp_path / "rank1.txt").read_text() == "None"


def gather_worker(rank: int, world: int, port: int, out: str) -> None:
    ranks = join(rank, world, port, timeout_minutes=1)
    Path(out, f"rank{rank}.txt").write_text(repr(ranks.gather_to_main({"rank": rank})))
    ranks.close()


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
