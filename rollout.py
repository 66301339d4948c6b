"""Collecting a rollout: the policy acts in the vector envs and every step goes into the buffer.

Data flows one way: env -> policy acts -> buffer, the policy carrying its `Memory` (recurrent state, episode
starts) from step to step; `HostToDevice` moves observations to the policy's device; `PolicyStep` is the
policy's step, replayed as one CUDA graph on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from buffer import RewardScaler, RolloutBuffer
from policy import Act, ActorCritic, Memory
from vecenv import VecEnv


class HostToDevice:
    """Host arrays -> device tensors. On CUDA through reused pinned buffers and non-blocking copies (each
    buffer is rewritten only once its last copy has finished); on CPU without any copy."""

    def __init__(self, device: torch.device):
        self.device = device
        self.slots: dict[tuple, tuple[torch.Tensor, torch.cuda.Event | None]] = {}

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.as_tensor(array)
        key = (array.shape, array.dtype.str)
        pinned, copied = self.slots.get(key) or (torch.from_numpy(np.empty_like(array)).pin_memory(), None)
        if copied is not None:
            copied.synchronize()
        pinned.numpy()[...] = array
        tensor = pinned.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))  # the copy's stream, whichever GPU is current
        self.slots[key] = (pinned, event)
        return tensor


class PolicyStep:
    """`policy.act` for the rollout's fixed batch of `num_envs`. On CUDA (with `graph`) the step is captured once
    as a CUDA graph and then replayed: one launch instead of one per layer, since a step on a few envs is bound by
    launch latency, not arithmetic. The graph reads the parameters where they live, so in-place updates (the
    optimizer, checkpoint loads) are seen; inputs are copied into the graph's static tensors and outputs out of
    them. Eager on CPU, for other batch sizes, and without `graph`."""

    def __init__(self, policy: ActorCritic, num_envs: int, device: torch.device, graph: bool = True):
        self.policy, self.num_envs = policy, num_envs
        self.use_graph = graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor) -> Act:
        """Inside torch.inference_mode(): obs (N, K*C, H, W) uint8, state (N, S) or None, starts (N,) bool."""
        if not self.use_graph or len(obs) != self.num_envs:
            return self.policy.act(obs, state, starts)
        if self.graph is None:
            self.capture(obs, state, starts)
        self.inputs[0].copy_(obs)
        self.inputs[2].copy_(starts)
        if state is not None:
            self.inputs[1].copy_(state)
        self.graph.replay()
        return Act(*(None if t is None else t.clone() for t in self.outputs))  # the next replay overwrites them

    def capture(self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor) -> None:
        self.inputs = (obs.clone(), None if state is None else state.clone(), starts.clone())
        current = torch.cuda.current_stream(obs.device)
        side = torch.cuda.Stream(obs.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires: cuDNN picks kernels
            for _ in range(3):
                self.policy.act(*self.inputs)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.policy.act(*self.inputs)


def collect_rollout(
    envs: VecEnv,
    policy: ActorCritic,
    buffer: RolloutBuffer,
    obs: np.ndarray,
    memory: Memory,
    scaler: RewardScaler,
    timing: dict[str, float],
    to_device: HostToDevice,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[int], None] = lambda t: None,
    step: PolicyStep | None = None,
    start: int = 0,
) -> tuple[np.ndarray, Memory, list, int]:
    """Fill steps `start`.. of `buffer` (num_steps steps of every env in all), going on from `obs` and `memory`;
    the policy acts through `step` (default: eager `policy.act`); `on_step(t)` after each step. -> (next obs,
    next memory, finished episodes, the rollout's steps now stored: num_steps, or fewer when `should_stop()` cut
    it, and a later call with that `start` goes on where it stopped)."""
    policy.eval()
    step = step or policy.act
    episodes = []
    if start == 0 and memory.state is not None:
        buffer.initial_state.copy_(memory.state)
    for t in range(start, buffer.num_steps):
        if should_stop():
            return obs, memory, episodes, t
        tic = time.perf_counter()
        obs_t = to_device(obs)  # (N, K*C, H, W) uint8: frames become floats on the device
        with torch.inference_mode():
            act = step(obs_t, memory.state, memory.starts)
        actions = act.action.cpu().numpy()  # the one sync per step: the envs need the actions
        tac = time.perf_counter()
        result = envs.step(actions)
        toc = time.perf_counter()
        dones = result.terminated | result.truncated
        rewards_dones = to_device(np.stack([scaler(result.rewards, dones), dones.astype(np.float32)]))  # (2, N)
        bootstrap = torch.zeros(envs.num_envs, device=buffer.device)
        if result.truncated.any():  # time limit: the episode's value beyond it is V(final obs), not 0
            with torch.inference_mode():
                cut = to_device(result.truncated)
                final = to_device(result.final_obs[result.truncated])
                state = None if act.state is None else act.state[cut]
                fresh = torch.zeros(len(final), dtype=torch.bool, device=buffer.device)
                bootstrap[cut] = policy.value(final, state, fresh)
        inputs = act.features if policy.caches_features else obs_t
        rewards, ended = rewards_dones[0], rewards_dones[1]
        buffer.add(t, inputs, act.action, act.logprob, act.value, rewards, ended, bootstrap, memory.starts)
        memory = Memory(act.state, ended.bool())
        obs = result.obs
        episodes.extend(result.episodes)
        timing["inference"] += tac - tic + time.perf_counter() - toc
        timing["env"] += toc - tac
        on_step(t)
    return obs, memory, episodes, buffer.num_steps
