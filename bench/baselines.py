"""Baseline PPO training loops that bench/throughput.py measures our trainer against, side by side.

`python bench/baselines.py atari|procgen --updates N` prints one JSON object:
`{"steps_per_s", "steps", "seconds", "seconds_split": {"env", "inference", "update"}, "episodes"}`; `episodes`
lists every finished full game as [global_step, raw return] (procgen: [global_step, return, length]).

- `cleanrl_ppo_atari`: CleanRL's ppo_atari.py, wrapped in a function, on gymnasium 1.4 + ale_py 0.12.
  Source: https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo_atari.py
- `plain_procgen_loop`: a straightforward PyTorch loop over `ProcgenGym3Env` with the official Procgen PPO
  settings (Cobbe et al. 2020, https://github.com/openai/train-procgen) and the loop and IMPALA agent of
  CleanRL's ppo_procgen.py: https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo_procgen.py

Timing follows CleanRL's SPS (env steps / wall seconds), except that the clock starts after env construction
and the first reset. The split: "env" is the time inside the env's step call (`envs.step`, or
`env.act` + `env.observe`); "inference" is the rest of the rollout loop (policy forward under no_grad,
converting observations to float tensors, buffer writes, reward normalization, episode bookkeeping);
"update" is GAE, batch flattening and the PPO epochs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008 (as in CleanRL)
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def _split_result(global_step: int, seconds: float, t_env: float, t_inf: float, t_upd: float) -> dict:
    return {
        "steps_per_s": global_step / seconds,
        "steps": global_step,
        "seconds": seconds,
        "seconds_split": {"env": t_env, "inference": t_inf, "update": t_upd},
    }


# ------------------------------------------------------------------------------------------ Atari
# CleanRL's Atari wrappers are stable_baselines3's; gymnasium 1.4 lacks them, so they are ported here.
# NoopReset(30) + MaxAndSkip(4) + ResizeObservation(84x84) + GrayScaleObservation are gymnasium 1.4's
# AtariPreprocessing, ported below because it refuses to run without opencv, which the project does not install.


def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of area-averaging weights: cv2.INTER_AREA for a downscale, as a linear map."""
    scale = src / dst
    weights = np.zeros((dst, src), dtype=np.float32)
    for i in range(dst):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
            weights[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return weights


class AtariPreprocessing(gym.Wrapper):
    """gymnasium 1.4's AtariPreprocessing(noop_max, frame_skip, screen_size, terminal_on_life_loss=False,
    grayscale_obs=True, scale_obs=False): SB3's NoopResetEnv (integers(1, noop_max + 1) no-ops) and MaxAndSkipEnv
    (max over the last two of `frame_skip` frames), grayscale frames read from ALE, INTER_AREA resize. The resize
    is cv2's when opencv is installed (as in gymnasium), otherwise the same area average as two small matmuls."""

    def __init__(self, env, noop_max: int = 30, frame_skip: int = 4, screen_size: int = 84):
        super().__init__(env)
        assert getattr(env.unwrapped, "_frameskip", None) == 1, "disable frame-skipping in the original env"
        assert env.unwrapped.get_action_meanings()[0] == "NOOP"
        self.noop_max = noop_max
        self.frame_skip = frame_skip
        self.screen_size = (screen_size, screen_size)
        height, width = env.observation_space.shape[:2]
        self.obs_buffer = [np.empty((height, width), dtype=np.uint8), np.empty((height, width), dtype=np.uint8)]
        self.observation_space = gym.spaces.Box(low=0, high=255, shape=self.screen_size, dtype=np.uint8)
        try:
            import cv2

            self._resize = lambda frame: cv2.resize(frame, self.screen_size, interpolation=cv2.INTER_AREA)
        except ImportError:
            rows, cols = _area_weights(height, screen_size), _area_weights(width, screen_size).T.copy()
            self._resize = lambda frame: np.rint(rows @ frame.astype(np.float32) @ cols).astype(np.uint8)

    @property
    def ale(self):
        return self.env.unwrapped.ale

    def step(self, action):
        total_reward, terminated, truncated, info = 0.0, False, False, {}
        for t in range(self.frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total_reward += reward
            if terminated or truncated:
                break
            if t == self.frame_skip - 2:
                self.ale.getScreenGrayscale(self.obs_buffer[1])
            elif t == self.frame_skip - 1:
                self.ale.getScreenGrayscale(self.obs_buffer[0])
        return self._get_obs(), total_reward, terminated, truncated, info

    def reset(self, *, seed=None, options=None):
        _, reset_info = self.env.reset(seed=seed, options=options)
        noops = self.env.unwrapped.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            _, _, terminated, truncated, step_info = self.env.step(0)
            reset_info.update(step_info)
            if terminated or truncated:
                _, reset_info = self.env.reset(seed=seed, options=options)
        self.ale.getScreenGrayscale(self.obs_buffer[0])
        self.obs_buffer[1].fill(0)
        return self._get_obs(), reset_info

    def _get_obs(self):
        if self.frame_skip > 1:
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        return self._resize(self.obs_buffer[0])


class EpisodicLifeEnv(gym.Wrapper):
    """SB3 EpisodicLifeEnv: a lost life ends the training episode, but the game only resets when it is over."""

    def __init__(self, env):
        super().__init__(env)
        self.lives = 0
        self.was_real_done = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.was_real_done:
            obs, info = self.env.reset(**kwargs)
        else:
            # no-op step to advance from terminal/lost life state
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireResetEnv(gym.Wrapper):
    """SB3 FireResetEnv: press FIRE (then action 2) on reset for games that need it to start."""

    def __init__(self, env):
        super().__init__(env)
        assert env.unwrapped.get_action_meanings()[1] == "FIRE"
        assert len(env.unwrapped.get_action_meanings()) >= 3

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, _ = self.env.step(1)
        if terminated or truncated:
            self.env.reset(**kwargs)
        obs, _, terminated, truncated, _ = self.env.step(2)
        if terminated or truncated:
            self.env.reset(**kwargs)
        return obs, {}


class ClipRewardEnv(gym.RewardWrapper):
    """SB3 ClipRewardEnv: reward -> sign(reward)."""

    def reward(self, reward):
        return np.sign(float(reward))


def _make_ale(env_id: str):
    # "BreakoutNoFrameskip-v4" == "ALE/Breakout-v5" with frameskip=1, no sticky actions, minimal action set
    # (ale_py 0.12 registers both with exactly these kwargs).
    if env_id.endswith("NoFrameskip-v4"):
        env_id = f"ALE/{env_id[: -len('NoFrameskip-v4')]}-v5"
    return gym.make(env_id, frameskip=1, repeat_action_probability=0.0, full_action_space=False)


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        env = _make_ale(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        # NoopResetEnv(30) + MaxAndSkipEnv(4) + ResizeObservation(84, 84) + GrayScaleObservation. Life loss is
        # handled by EpisodicLifeEnv below: AtariPreprocessing's terminal_on_life_loss=True would reset the whole
        # game after every lost life, which SB3's EpisodicLifeEnv does not.
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.FrameStackObservation(env, 4)
        return env

    return thunk


class AtariAgent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x / 255.0))

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x / 255.0)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def cleanrl_update(
    agent,
    optimizer,
    next_obs,
    next_done,
    obs,
    logprobs,
    actions,
    rewards,
    dones,
    values,
    *,
    gamma: float,
    gae_lambda: float,
    batch_size: int,
    minibatch_size: int,
    update_epochs: int,
    clip_coef: float,
    norm_adv: bool,
    clip_vloss: bool,
    ent_coef: float,
    vf_coef: float,
    max_grad_norm: float,
    target_kl: float | None,
) -> None:
    """GAE, flattening and the PPO epochs of CleanRL's ppo_atari.py and ppo_procgen.py (identical in both
    scripts), verbatim."""
    num_steps, device = rewards.shape[0], rewards.device
    # bootstrap value if not done
    with torch.no_grad():
        next_value = agent.get_value(next_obs).reshape(1, -1)
        advantages = torch.zeros_like(rewards).to(device)
        lastgaelam = 0
        for t in reversed(range(num_steps)):
            if t == num_steps - 1:
                nextnonterminal = 1.0 - next_done
                nextvalues = next_value
            else:
                nextnonterminal = 1.0 - dones[t + 1]
                nextvalues = values[t + 1]
            delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + values

    # flatten the batch
    b_obs = obs.reshape((-1,) + obs.shape[2:])
    b_logprobs = logprobs.reshape(-1)
    b_actions = actions.reshape(-1)
    b_advantages = advantages.reshape(-1)
    b_returns = returns.reshape(-1)
    b_values = values.reshape(-1)

    # Optimizing the policy and value network
    b_inds = np.arange(batch_size)
    clipfracs = []
    for _epoch in range(update_epochs):
        np.random.shuffle(b_inds)
        for start in range(0, batch_size, minibatch_size):
            end = start + minibatch_size
            mb_inds = b_inds[start:end]

            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
            logratio = newlogprob - b_logprobs[mb_inds]
            ratio = logratio.exp()

            with torch.no_grad():
                # calculate approx_kl http://joschu.net/blog/kl-approx.html
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs += [((ratio - 1.0).abs() > clip_coef).float().mean().item()]

            mb_advantages = b_advantages[mb_inds]
            if norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            # Policy loss
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            # Value loss
            newvalue = newvalue.view(-1)
            if clip_vloss:
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(
                    newvalue - b_values[mb_inds],
                    -clip_coef,
                    clip_coef,
                )
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                v_loss = 0.5 * v_loss_max.mean()
            else:
                v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

            entropy_loss = entropy.mean()
            loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
            optimizer.step()

        if target_kl is not None and approx_kl > target_kl:
            break

    y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
    var_y = np.var(y_true)
    explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

    # TRY NOT TO MODIFY: record rewards for plotting purposes (CleanRL's writer.add_scalar calls, as values)
    _ = (
        optimizer.param_groups[0]["lr"],
        v_loss.item(),
        pg_loss.item(),
        entropy_loss.item(),
        old_approx_kl.item(),
        approx_kl.item(),
        np.mean(clipfracs),
        explained_var,
    )


def cleanrl_ppo_atari(env_id: str = "BreakoutNoFrameskip-v4", updates: int = 1, seed: int = 1) -> dict:
    """CleanRL ppo_atari.py with its default arguments, run for `updates` iterations (of 8 x 128 steps).

    Source: https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo_atari.py (same structure and ops; the
    tensorboard writer, wandb, video capture and the CLI are left out). gymnasium 1.4 changes:
    - the SB3 Atari wrappers become in-file ports: gymnasium's AtariPreprocessing (noop reset, max-and-skip,
      grayscale, 84x84 area resize; it grabs the gray screen from ALE rather than converting RGB after the
      resize) without its opencv requirement, SB3's EpisodicLife/FireReset/ClipReward; FrameStack becomes
      gymnasium's FrameStackObservation (a numpy array instead of LazyFrames);
    - the vector env uses SAME_STEP autoreset, the behaviour of gymnasium 0.29 that CleanRL's loop assumes
      (gymnasium 1.x defaults to NEXT_STEP); episode statistics are read from infos["final_info"].
    The learning rate anneals over the 10M-step default run (num_iterations = 10M // batch_size), of which
    `updates` iterations are run.
    """
    # Args (CleanRL defaults)
    total_timesteps = 10000000
    learning_rate = 2.5e-4
    num_envs = 8
    num_steps = 128
    anneal_lr = True
    gamma = 0.99
    gae_lambda = 0.95
    num_minibatches = 4
    update_epochs = 4
    norm_adv = True
    clip_coef = 0.1
    clip_vloss = True
    ent_coef = 0.01
    vf_coef = 0.5
    max_grad_norm = 0.5
    target_kl = None
    torch_deterministic = True
    cuda = True

    batch_size = int(num_envs * num_steps)
    minibatch_size = int(batch_size // num_minibatches)
    num_iterations = total_timesteps // batch_size
    run_name = f"{env_id}__ppo_atari__{seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and cuda else "cpu")

    # env setup
    import ale_py

    gym.register_envs(ale_py)
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, i, False, run_name) for i in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"

    agent = AtariAgent(envs).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    # ALGO Logic: Storage setup
    obs = torch.zeros((num_steps, num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((num_steps, num_envs) + envs.single_action_space.shape).to(device)
    logprobs = torch.zeros((num_steps, num_envs)).to(device)
    rewards = torch.zeros((num_steps, num_envs)).to(device)
    dones = torch.zeros((num_steps, num_envs)).to(device)
    values = torch.zeros((num_steps, num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    next_obs, _ = envs.reset(seed=seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(num_envs).to(device)
    episodic_returns = []
    t_env = t_upd = 0.0
    start_time = time.perf_counter()

    for iteration in range(1, updates + 1):
        # Annealing the rate if instructed to do so.
        if anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            lrnow = frac * learning_rate
            optimizer.param_groups[0]["lr"] = lrnow

        for step in range(0, num_steps):
            global_step += num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            cpu_action = action.cpu().numpy()
            tic = time.perf_counter()
            next_obs, reward, terminations, truncations, infos = envs.step(cpu_action)
            t_env += time.perf_counter() - tic
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)

            if "final_info" in infos and "episode" in infos["final_info"]:
                final = infos["final_info"]
                for i in np.flatnonzero(final["_episode"]):
                    episodic_returns.append((global_step, float(final["episode"]["r"][i])))

        tic = time.perf_counter()
        cleanrl_update(
            agent,
            optimizer,
            next_obs,
            next_done,
            obs,
            logprobs,
            actions,
            rewards,
            dones,
            values,
            gamma=gamma,
            gae_lambda=gae_lambda,
            batch_size=batch_size,
            minibatch_size=minibatch_size,
            update_epochs=update_epochs,
            clip_coef=clip_coef,
            norm_adv=norm_adv,
            clip_vloss=clip_vloss,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            target_kl=target_kl,
        )
        t_upd += time.perf_counter() - tic

    seconds = time.perf_counter() - start_time
    envs.close()
    return _split_result(global_step, seconds, t_env, seconds - t_env - t_upd, t_upd) | {"episodes": episodic_returns}


# ---------------------------------------------------------------------------------------- Procgen


# taken from https://github.com/AIcrowd/neurips2020-procgen-starter-kit/blob/142d09586d2272a17f44481a115c4bd817cf6a94/models/impala_cnn_torch.py
# (via CleanRL ppo_procgen.py)
class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels=channels, out_channels=channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(in_channels=channels, out_channels=channels, kernel_size=3, padding=1)

    def forward(self, x):
        inputs = x
        x = nn.functional.relu(x)
        x = self.conv0(x)
        x = nn.functional.relu(x)
        x = self.conv1(x)
        return x + inputs


class ConvSequence(nn.Module):
    def __init__(self, input_shape, out_channels):
        super().__init__()
        self._input_shape = input_shape
        self._out_channels = out_channels
        self.conv = nn.Conv2d(
            in_channels=self._input_shape[0], out_channels=self._out_channels, kernel_size=3, padding=1
        )
        self.res_block0 = ResidualBlock(self._out_channels)
        self.res_block1 = ResidualBlock(self._out_channels)

    def forward(self, x):
        x = self.conv(x)
        x = nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.res_block0(x)
        x = self.res_block1(x)
        assert x.shape[1:] == self.get_output_shape()
        return x

    def get_output_shape(self):
        _c, h, w = self._input_shape
        return (self._out_channels, (h + 1) // 2, (w + 1) // 2)


class ProcgenAgent(nn.Module):
    def __init__(self, obs_shape, num_actions):
        super().__init__()
        h, w, c = obs_shape
        shape = (c, h, w)
        conv_seqs = []
        for out_channels in [16, 32, 32]:
            conv_seq = ConvSequence(shape, out_channels)
            shape = conv_seq.get_output_shape()
            conv_seqs.append(conv_seq)
        conv_seqs += [
            nn.Flatten(),
            nn.ReLU(),
            nn.Linear(in_features=shape[0] * shape[1] * shape[2], out_features=256),
            nn.ReLU(),
        ]
        self.network = nn.Sequential(*conv_seqs)
        self.actor = layer_init(nn.Linear(256, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(256, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x.permute((0, 3, 1, 2)) / 255.0))  # "bhwc" -> "bchw"

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x.permute((0, 3, 1, 2)) / 255.0)  # "bhwc" -> "bchw"
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


class RunningMeanStd:
    """gym 0.23's RunningMeanStd (parallel variance update), used by NormalizeReward."""

    def __init__(self, epsilon=1e-4, shape=()):
        self.mean = np.zeros(shape, "float64")
        self.var = np.ones(shape, "float64")
        self.count = epsilon

    def update(self, x):
        batch_mean = np.mean(x, axis=0)
        batch_var = np.var(x, axis=0)
        batch_count = x.shape[0]
        delta = batch_mean - self.mean
        tot_count = self.count + batch_count
        new_mean = self.mean + delta * batch_count / tot_count
        m_a = self.var * self.count
        m_b = batch_var * batch_count
        m_2 = m_a + m_b + np.square(delta) * self.count * batch_count / tot_count
        self.mean, self.var, self.count = new_mean, m_2 / tot_count, tot_count


def plain_procgen_loop(
    game: str = "starpilot", updates: int = 1, seed: int = 1, num_envs: int = 64, num_steps: int = 256
) -> dict:
    """A straightforward PyTorch PPO loop over `ProcgenGym3Env` with the official Procgen settings.

    Settings: Cobbe et al. 2020 / https://github.com/openai/train-procgen (easy, levels [0, 200), 64 envs x 256
    steps, IMPALA CNN [16, 32, 32] + 256 dense, gamma 0.999, lambda 0.95, 3 epochs, 8 minibatches, lr 5e-4
    constant, clip 0.2, value clipping, entropy 0.01, vf 0.5, grad norm 0.5, reward normalization clipped to
    +-10). Loop, agent and float32 observation buffer as in CleanRL's ppo_procgen.py
    (https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo_procgen.py): every step the uint8 NHWC frames
    become a float tensor, the network permutes to NCHW and divides by 255. The gym wrappers CleanRL stacks on
    ProcgenEnv (RecordEpisodeStatistics, NormalizeReward(gamma), reward clip) are inlined in numpy, and the
    gym3 API is used directly: `env.act(actions)` then `rew, obs, first = env.observe()`, where `first` is
    CleanRL's `done`.
    """
    from procgen import ProcgenGym3Env

    # Args (official Procgen PPO)
    learning_rate = 5e-4
    anneal_lr = False
    gamma = 0.999
    gae_lambda = 0.95
    num_minibatches = 8
    update_epochs = 3
    norm_adv = True
    clip_coef = 0.2
    clip_vloss = True
    ent_coef = 0.01
    vf_coef = 0.5
    max_grad_norm = 0.5
    target_kl = None
    torch_deterministic = True
    cuda = True

    batch_size = int(num_envs * num_steps)
    minibatch_size = int(batch_size // num_minibatches)
    num_iterations = updates

    # TRY NOT TO MODIFY: seeding
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic

    device = torch.device("cuda" if torch.cuda.is_available() and cuda else "cpu")

    # env setup
    env = ProcgenGym3Env(
        num=num_envs,
        env_name=game,
        num_levels=200,
        start_level=0,
        distribution_mode="easy",
        rand_seed=seed,
    )
    obs_shape = env.ob_space["rgb"].shape  # (64, 64, 3)
    num_actions = env.ac_space.eltype.n
    # RecordEpisodeStatistics + NormalizeReward(gamma) + clip(-10, 10), as CleanRL wraps ProcgenEnv
    episode_returns = np.zeros(num_envs, dtype=np.float64)
    episode_lengths = np.zeros(num_envs, dtype=np.int64)
    return_rms = RunningMeanStd(shape=())
    discounted_returns = np.zeros(num_envs)
    episodic_returns = []

    agent = ProcgenAgent(obs_shape, num_actions).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    # ALGO Logic: Storage setup
    obs = torch.zeros((num_steps, num_envs) + obs_shape).to(device)
    actions = torch.zeros((num_steps, num_envs)).to(device)
    logprobs = torch.zeros((num_steps, num_envs)).to(device)
    rewards = torch.zeros((num_steps, num_envs)).to(device)
    dones = torch.zeros((num_steps, num_envs)).to(device)
    values = torch.zeros((num_steps, num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    _, first_obs, _ = env.observe()
    next_obs = torch.Tensor(first_obs["rgb"]).to(device)
    next_done = torch.zeros(num_envs).to(device)
    t_env = t_upd = 0.0
    start_time = time.perf_counter()

    for iteration in range(1, num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            lrnow = frac * learning_rate
            optimizer.param_groups[0]["lr"] = lrnow

        for step in range(0, num_steps):
            global_step += num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            cpu_action = action.cpu().numpy().astype(np.int32)
            tic = time.perf_counter()
            env.act(cpu_action)
            reward, ob, first = env.observe()
            t_env += time.perf_counter() - tic

            # RecordEpisodeStatistics (raw rewards)
            episode_returns += reward
            episode_lengths += 1
            for i in np.flatnonzero(first):
                episodic_returns.append((global_step, float(episode_returns[i]), int(episode_lengths[i])))
            episode_returns[first] = 0.0
            episode_lengths[first] = 0
            # NormalizeReward(gamma) then clip to [-10, 10]
            discounted_returns = discounted_returns * gamma + reward
            return_rms.update(discounted_returns)
            reward = reward / np.sqrt(return_rms.var + 1e-8)
            discounted_returns[first] = 0.0
            reward = np.clip(reward, -10, 10)

            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(ob["rgb"]).to(device), torch.Tensor(first).to(device)

        tic = time.perf_counter()
        cleanrl_update(
            agent,
            optimizer,
            next_obs,
            next_done,
            obs,
            logprobs,
            actions,
            rewards,
            dones,
            values,
            gamma=gamma,
            gae_lambda=gae_lambda,
            batch_size=batch_size,
            minibatch_size=minibatch_size,
            update_epochs=update_epochs,
            clip_coef=clip_coef,
            norm_adv=norm_adv,
            clip_vloss=clip_vloss,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            target_kl=target_kl,
        )
        t_upd += time.perf_counter() - tic

    seconds = time.perf_counter() - start_time
    return _split_result(global_step, seconds, t_env, seconds - t_env - t_upd, t_upd) | {"episodes": episodic_returns}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["atari", "procgen"])
    parser.add_argument("--updates", type=int, default=1, help="PPO iterations (rollout + update) to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--env-id", default="BreakoutNoFrameskip-v4", help="atari only")
    parser.add_argument("--game", default="starpilot", help="procgen only")
    parser.add_argument("--num-envs", type=int, default=64, help="procgen only")
    parser.add_argument("--num-steps", type=int, default=256, help="procgen only")
    args = parser.parse_args(argv)
    if args.which == "atari":
        result = cleanrl_ppo_atari(args.env_id, updates=args.updates, seed=args.seed)
    else:
        result = plain_procgen_loop(
            args.game, updates=args.updates, seed=args.seed, num_envs=args.num_envs, num_steps=args.num_steps
        )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
