"""The CUDA paths on a GPU (skipped without one; bench/gpu_checks.sh runs them on a lent GPU): the rollout's policy
step replayed as a CUDA graph equals the eager step, sees in-place weight updates, carries recurrent state and
samples the policy's distribution; a real run trains with it, resumes and is evaluated on the GPU. On CPU the step
is the eager one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from toy_env import GridGoalVecEnv

from config import Config
from policy import ActorCritic, PolicySpec
from rollout import PolicyStep
from train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def test_the_policy_step_is_eager_on_cpu():
    """On CPU the step is `policy.act` itself: the same draws from the same seed, and no graph."""
    spec = PolicySpec("nature_cnn", (4, 84, 84), 1, 6, head_hidden=0, freeze_backbone=False)
    policy = ActorCritic(spec).eval()
    step = PolicyStep(policy, 4, torch.device("cpu"))
    obs, starts = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8), torch.ones(4, dtype=torch.bool)
    with torch.inference_mode():
        torch.manual_seed(0)
        stepped = step(obs, None, starts)
        torch.manual_seed(0)
        eager = policy.act(obs, None, starts)
    assert step.graph is None
    for a, b in zip(stepped, eager, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def small_policy(recurrent: str = "none") -> ActorCritic:
    spec = PolicySpec(
        "impala_cnn", (12, 64, 64), 3, 17, head_hidden=32, freeze_backbone=False, recurrent=recurrent, recurrent_size=16
    )
    return ActorCritic(spec).to(CUDA).eval()


def frames(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 12, 64, 64), dtype=torch.uint8, device=CUDA)


def assert_step_matches_eager(policy: ActorCritic, act, obs, state, starts) -> None:
    """`act` (a graphed step's output) is what the eager policy computes for the same inputs and drawn actions."""
    logits, value = policy(obs, state, starts)
    eager = policy.act(obs, state, starts)
    torch.testing.assert_close(act.value, value, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(act.features, eager.features, atol=1e-5, rtol=1e-5)
    logprob = F.log_softmax(logits, -1).gather(1, act.action[:, None]).squeeze(1)
    torch.testing.assert_close(act.logprob, logprob, atol=1e-5, rtol=1e-5)
    if eager.state is not None:
        torch.testing.assert_close(act.state, eager.state, atol=1e-5, rtol=1e-5)


@needs_cuda
@pytest.mark.parametrize("recurrent", ["none", "gru", "lstm"])
def test_graphed_step_matches_the_eager_step_and_carries_the_state(recurrent):
    torch.manual_seed(0)
    policy = small_policy(recurrent)
    step = PolicyStep(policy, 8, CUDA)
    memory = policy.fresh_memory(8)
    state, starts = memory.state, memory.starts
    with torch.inference_mode():
        for t in range(4):  # episodes start at step 0, continue, and restart for half the envs at step 2
            obs = frames(8)
            act = step(obs, state, starts)
            assert step.graph is not None
            assert_step_matches_eager(policy, act, obs, state, starts)
            if act.state is not None:  # the carried state is a copy: the next replay does not overwrite it
                assert act.state.data_ptr() != step.outputs.state.data_ptr()
            state = act.state
            starts = torch.arange(8, device=CUDA) < (4 if t == 1 else 0)


@needs_cuda
def test_graph_sees_in_place_weight_updates():
    torch.manual_seed(1)
    policy = small_policy()
    step = PolicyStep(policy, 8, CUDA)
    obs, starts = frames(8), torch.ones(8, dtype=torch.bool, device=CUDA)
    with torch.inference_mode():
        before = step(obs, None, starts).value.clone()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    policy.train()
    loss = policy(obs)[1].square().mean()  # drive the values towards 0
    loss.backward()
    optimizer.step()
    policy.eval()
    with torch.inference_mode():
        act = step(obs, None, starts)
        assert not torch.allclose(act.value, before)
        assert_step_matches_eager(policy, act, obs, None, starts)


@needs_cuda
def test_graphed_sampling_draws_the_policys_distribution():
    """Each replay draws new actions (the graph advances the RNG) with the policy's probabilities."""
    torch.manual_seed(2)
    policy = small_policy()
    with torch.no_grad():
        policy.policy_head[-1].weight.mul_(300)  # a peaked, non-uniform policy
    step = PolicyStep(policy, 8, CUDA)
    obs, starts = frames(1).expand(8, -1, -1, -1).contiguous(), torch.ones(8, dtype=torch.bool, device=CUDA)
    with torch.inference_mode():
        probs = policy(obs[:1])[0].softmax(-1)[0]
        draws = torch.cat([step(obs, None, starts).action for _ in range(2000)])
    counts = torch.bincount(draws, minlength=17).float() / len(draws)
    assert probs.max() > 0.2 and probs.min() < 0.02  # the test has something to tell apart
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)


@needs_cuda
def test_trainer_collects_through_the_graph_and_its_first_update_starts_at_ratio_one(tmp_path):
    cfg = Config(
        backbone="impala_cnn", pretrained=False, freeze_backbone=False, head_hidden=32, num_envs=4, num_steps=16,
        num_minibatches=2, update_epochs=1, steps=128, seed=0, eval_interval=10**9, eval_episodes=2,
        eval_video=False, wandb_mode="disabled", logdir=str(tmp_path / "run_1"), device="cuda", lr=1e-12,
    )  # fmt: skip
    trainer = Trainer(cfg, envs=GridGoalVecEnv(4, seed=0, limit=5), eval_envs=GridGoalVecEnv(2, seed=1))
    assert trainer.train_one_update()
    assert trainer.policy_step.graph is not None
    stats = trainer.ppo.update(trainer.buffer)  # lr ~0: the update re-runs the rollout's policy (TF32: ~exact)
    assert stats["approx_kl"] < 1e-4 and stats["clipfrac"] == 0
    trainer.close()


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)


@needs_cuda
def test_a_crafter_run_trains_resumes_and_evaluates_on_the_gpu(tmp_path):
    logdir = tmp_path / "run_1"
    tiny = ["--env", "crafter", "--backbone", "nature_cnn", "--no-pretrained", "--no-freeze-backbone", "--num-envs",
            "4", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2", "--eval-interval", "256",
            "--eval-episodes", "2", "--eval-envs", "2", "--wandb-mode", "disabled", "--device", "cuda"]  # fmt: skip
    first = run("train.py", *tiny, "--steps", "512", "--stop-after", "256", "--logdir", str(logdir))
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run("train.py", "--resume", str(logdir), "--device", "cuda")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["global_step"] == 512 and summary["finished"]
    scored = run("evaluate.py", str(logdir / "last.pth"), "--episodes", "2", "--num-envs", "2", "--device", "cuda")
    assert scored.returncode == 0, scored.stderr[-2000:]
