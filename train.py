"""Train a PPO agent on a pixel game: `python train.py --logdir logs/run_1`.

Collect a rollout from vectorized envs -> GAE -> clipped PPO epochs -> log; every --eval-interval steps
evaluate on separate envs and keep `best_model.pth` whenever the family's published metric improves.
Settings come from flags, `--config FILE.yaml` or `--preset NAME` (configs/NAME.yaml); see config.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from agent import PPO, scheduled_lr
from buffer import RewardScaler, RolloutBuffer
from checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    resolve_checkpoint_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_arrays,
    to_tensors,
)
from config import Config, config_from_flags, parse_flags, resolve_device, resumed_config, validate, write_run_file
from env import EnvCrashError, VecEnv, make_vec_env
from errors import UsageError
from evaluate import EvalStats, eval_row, make_eval_env, run_episodes, selection_score
from policy import ActorCritic, PolicySpec
from runlog import EpisodeLog, Progress, RunLogger, prepare_logdir, truncate_metrics
from visuals import plot_learning_curve, write_video


class TrainingError(RuntimeError):
    """The run cannot go on (repeated env crashes, non-finite losses); a checkpoint has been saved."""


class StopSignal:
    """While entered, SIGINT / SIGTERM ask the loop to stop at the next env step and save; a second one stops
    at once."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received}: saving a checkpoint and stopping (send it again to stop at once)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.received is not None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_train_env(cfg: Config) -> VecEnv:
    return make_vec_env(
        cfg.env,
        cfg.num_envs,
        cfg.seed,
        cfg.history_length,
        max_crashes=cfg.max_env_crashes,
        distribution_mode=cfg.distribution_mode,
        start_level=cfg.start_level,
        num_levels=cfg.num_levels,
        episodic_life=cfg.episodic_life,
        repeat_action_probability=cfg.sticky_actions,
    )


def make_buffer(cfg: Config, policy: ActorCritic, envs: VecEnv, device: torch.device) -> RolloutBuffer:
    feature_dim = policy.feature_dim if policy.caches_features else None
    state_size = policy.core.state_size if policy.core is not None else 0
    return RolloutBuffer(
        cfg.num_steps, cfg.num_envs, envs.obs_shape, device, feature_dim, envs.frame_channels, state_size
    )


@dataclass
class Memory:
    """What a policy carries from one env step to the next: its recurrent state (N, S) (None without a
    recurrent core) and which observations begin an episode (N,) bool."""

    state: torch.Tensor | None
    starts: torch.Tensor

    @classmethod
    def fresh(cls, policy: ActorCritic, num_envs: int, device: torch.device) -> Memory:
        return cls(policy.initial_state(num_envs), torch.ones(num_envs, dtype=torch.bool, device=device))


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
        event.record()
        self.slots[key] = (pinned, event)
        return tensor


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
) -> tuple[np.ndarray, Memory, list, bool]:
    """Fill `buffer` with num_steps steps of every env, starting from `obs` and `memory`; `on_step(t)` after
    each step. -> (next obs, next memory, finished episodes, whether the rollout is complete; not when
    `should_stop()` cut it)."""
    policy.eval()
    episodes = []
    if memory.state is not None:
        buffer.initial_state.copy_(memory.state)
    for t in range(buffer.num_steps):
        if should_stop():
            return obs, memory, episodes, False
        tic = time.perf_counter()
        obs_t = to_device(obs)  # (N, K*C, H, W) uint8: frames become floats on the device
        with torch.inference_mode():
            act = policy.act(obs_t, memory.state, memory.starts)
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
    return obs, memory, episodes, True


class Trainer:
    """One run: builds envs, policy and PPO from a Config (and the checkpoint payload of a resumed run), then
    `run()`s collect -> GAE -> update -> log -> evaluate -> checkpoint until the step budget is spent.
    `envs` / `eval_envs` replace the games the config names (tests pass toy games)."""

    def __init__(
        self, cfg: Config, resume: dict | None = None, envs: VecEnv | None = None, eval_envs: VecEnv | None = None
    ):
        validate(cfg)
        self.cfg = cfg
        self.logdir = prepare_logdir(cfg)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        write_run_file(cfg, self.logdir / "config.yaml")

        self.envs = envs or make_train_env(cfg)
        # evaluation only runs between updates: a quarter of the cores' worker processes (~100 MB each) do
        eval_workers = max(1, (os.cpu_count() or 1) // 4)
        self.eval_envs = eval_envs or make_eval_env(
            cfg, min(cfg.eval_envs, cfg.eval_episodes), cfg.seed, num_workers=eval_workers
        )
        self.spec = PolicySpec(
            cfg.backbone,
            self.envs.obs_shape,
            self.envs.frame_channels,
            self.envs.num_actions,
            cfg.head_hidden,
            cfg.freeze_backbone,
            cfg.feature_norm,
            cfg.trunk_hidden,
            cfg.value_norm,
            cfg.image_size,
            cfg.recurrent,
            cfg.recurrent_size,
        )
        pretrained = cfg.pretrained and resume is None  # a resumed run's weights come from its checkpoint
        self.policy = ActorCritic(self.spec, pretrained, cfg.pretrained_file if pretrained else "").to(self.device)
        self.pretrained_loaded = resume["pretrained_loaded"] if resume else self.policy.pretrained_loaded
        if cfg.freeze_backbone and not self.pretrained_loaded:
            warnings.warn(
                f"FROZEN BACKBONE WITHOUT PRETRAINED WEIGHTS: {cfg.backbone} keeps its random init and only the "
                "heads learn; give --pretrained-file, or train the backbone with --no-freeze-backbone",
                stacklevel=2,
            )
        self.policy.amp = cfg.amp
        if cfg.compile:
            self.policy.backbone.compile()  # in place: checkpoints keep the plain parameter names
        if cfg.augment != "none" and self.policy.caches_features:
            warnings.warn(
                f"--augment {cfg.augment} with a frozen backbone: the update must see augmented frames, so the "
                "backbone's features are no longer cached (it runs in every epoch)",
                stacklevel=2,
            )
            self.policy.cache_features = False
        self.ppo = PPO(self.policy, cfg, seed=cfg.seed)
        self.buffer = make_buffer(cfg, self.policy, self.envs, self.device)
        self.to_device = HostToDevice(self.device)
        self.scaler = RewardScaler(cfg.reward_mode, cfg.num_envs, cfg.reward_norm_gamma or cfg.gamma)
        self.history = EvalStats(self.logdir)
        self.episodes = EpisodeLog()

        self.global_step = self.update = self.bad_updates = self.evaluations = 0
        self.best_score, self.last_score = -math.inf, None
        self.next_eval = cfg.eval_interval
        self.timing = {"env": 0.0, "inference": 0.0, "update": 0.0}
        self.elapsed_before = 0.0  # seconds spent by the run before this process (resume)
        self.memory = Memory.fresh(self.policy, cfg.num_envs, self.device)
        self.obs = self.restore(resume) if resume else self.envs.reset()
        info = {"pretrained_loaded": self.pretrained_loaded}
        self.logger = RunLogger(cfg, self.logdir, resume["resume"]["wandb_id"] if resume else None, info)
        self.stop = StopSignal()
        self.start = time.time()
        self.steps_at_start = self.global_step
        self.progress = Progress(cfg.num_updates * cfg.batch_size, self.global_step, cfg.progress_interval)

    # ---------------------------------------------------------------------------- checkpoints

    def checkpoint_payload(self, with_env_state: bool = True) -> dict:
        env_state = self.envs.get_state() if with_env_state else None
        return {
            "config": self.cfg.public_dict(),
            "policy_spec": self.spec.to_dict(),
            "model": self.policy.state_dict(),
            "optimizer": self.ppo.optimizer.state_dict(),
            "global_step": self.global_step,
            "pretrained_loaded": self.pretrained_loaded,
            "best_eval_score": self.best_score,
            "eval_score": self.last_score,
            "resume": {
                "update": self.update,
                "next_eval": self.next_eval,
                "bad_updates": self.bad_updates,
                "evaluations": self.evaluations,
                "timing": self.timing,
                "elapsed": self.elapsed(),
                "rng": rng_state(self.ppo.generator),
                "reward_scaler": self.scaler.state_dict(),
                "episodes": self.episodes.state_dict(),
                "obs": torch.from_numpy(self.obs.copy()),
                "memory": {"state": self.memory.state, "starts": self.memory.starts},
                "env_state": to_tensors(env_state),
                "wandb_id": self.logger.wandb_id,
            },
        }

    def save(self, name: str, with_env_state: bool = True) -> bool:
        """Write a checkpoint atomically; a failed write (disk full...) keeps the previous file and is
        reported, never fatal."""
        path = self.logdir / name
        try:
            save_checkpoint(path, self.checkpoint_payload(with_env_state))
            return True
        except OSError as e:
            warnings.warn(f"could not write {path} ({e.strerror or e}); the previous file is intact", stacklevel=2)
            return False

    def restore(self, payload: dict) -> np.ndarray:
        """Continue from a checkpoint: weights, optimizer, counters, RNGs, reward statistics, game state.
        -> the obs to continue from."""
        try:
            self.policy.load_state_dict(payload["model"])
            self.ppo.optimizer.load_state_dict(payload["optimizer"])
            state = payload["resume"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.cfg.resume} cannot be resumed: {str(e).splitlines()[0][:200]}") from e
        self.global_step, self.update = payload["global_step"], state["update"]
        self.best_score, self.last_score = payload["best_eval_score"], payload["eval_score"]
        self.next_eval, self.bad_updates = state["next_eval"], state["bad_updates"]
        self.evaluations = state["evaluations"]
        self.timing, self.elapsed_before = dict(state["timing"]), state["elapsed"]
        set_rng_state(state["rng"], self.ppo.generator)
        self.scaler.load_state_dict(state["reward_scaler"])
        self.episodes.load_state_dict(state["episodes"])
        memory = state["memory"]
        self.memory = Memory(memory["state"], memory["starts"])
        self.history.load(self.global_step)
        truncate_metrics(self.logdir / "metrics.jsonl", self.global_step)
        print(f"resuming {self.logdir} at step {self.global_step:,}")
        if state["env_state"] is None:
            warnings.warn(f"{self.cfg.env} game state cannot be saved: the resumed run starts new games", stacklevel=2)
            return self.envs.reset()
        return self.envs.set_state(to_arrays(state["env_state"]))

    # ---------------------------------------------------------------------------------- loop

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start

    def run(self) -> dict:
        """Train until --steps (or --stop-after, or a signal); -> summary, also in `summary.json`."""
        cfg = self.cfg
        print(
            f"pixelppo: {cfg.env} for {cfg.steps:,} steps on {self.device}, {cfg.num_envs} envs, "
            f"backbone {cfg.backbone} -> {self.logdir}",
            flush=True,
        )
        self.start = last_save = time.time()
        stop_reason = None
        try:
            with self.stop:
                while self.update < cfg.num_updates:
                    if not self.train_one_update():
                        stop_reason = self.stop.received
                        break
                    self.maybe_evaluate()
                    if self.stop():  # a signal during the evaluation
                        stop_reason = self.stop.received
                        break
                    if time.time() - last_save > cfg.save_interval * 60:
                        self.save("last.pth")
                        last_save = time.time()
                    first_or_last = self.update - 1 == self.steps_at_start // cfg.batch_size
                    self.show_progress("collecting", force=first_or_last or self.update == cfg.num_updates)
                    if cfg.stop_after and self.global_step >= cfg.stop_after and self.update < cfg.num_updates:
                        stop_reason = f"--stop-after {cfg.stop_after:,}"
                        break
            self.save("last.pth")
        except (EnvCrashError, TrainingError) as e:
            saved = self.save("last.pth", with_env_state=False)
            raise TrainingError(f"{e}; {'saved' if saved else 'could not save'} {self.logdir / 'last.pth'}") from e
        except KeyboardInterrupt:
            print(f"stopped at once at step {self.global_step:,}; last.pth is from the last save", file=sys.stderr)
            raise
        finally:
            self.close()
        if stop_reason:
            print(f"stopped ({stop_reason}) at step {self.global_step:,}; continue with --resume {self.logdir}")
        return self.write_summary(stop_reason)

    def train_one_update(self) -> bool:
        """Collect one rollout and run PPO on it; False when a stop signal cut the rollout (it is dropped)."""
        cfg = self.cfg
        lr = scheduled_lr(cfg, self.update / cfg.num_updates)
        self.ppo.set_lr(lr)
        self.obs, self.memory, finished, complete = collect_rollout(
            self.envs,
            self.policy,
            self.buffer,
            self.obs,
            self.memory,
            self.scaler,
            self.timing,
            self.to_device,
            self.stop,
            on_step=lambda t: self.show_progress("collecting", self.global_step + (t + 1) * cfg.num_envs),
        )
        self.episodes.add(finished)
        if not complete:
            return False

        self.show_progress("updating", self.global_step + cfg.batch_size)
        tic = time.perf_counter()
        with torch.inference_mode():
            last_values = self.policy.value(self.to_device(self.obs), self.memory.state, self.memory.starts)
        self.buffer.compute_advantages(last_values, cfg.gamma, cfg.gae_lambda)
        stats = self.ppo.update(self.buffer)
        self.timing["update"] += time.perf_counter() - tic
        self.global_step += cfg.batch_size
        self.update += 1
        self.check_finite(stats)

        metrics = (
            {f"losses/{k}": v for k, v in stats.items()}
            | {"charts/learning_rate": lr, "charts/episodes": self.episodes.count}
            | {"perf/sps": self.global_step / max(self.elapsed(), 1e-9)}
            | {f"perf/{k}_seconds": v for k, v in self.timing.items()}
            | self.episodes.crafter_metrics()
        )
        if self.episodes.recent_returns:
            metrics["charts/return_last_100"] = float(np.mean(self.episodes.recent_returns))
        if finished:
            metrics["charts/episode_return"] = float(np.mean([e.ret for e in finished]))
            metrics["charts/episode_length"] = float(np.mean([e.length for e in finished]))
        self.logger.log(self.global_step, metrics)
        return True

    def check_finite(self, stats: dict) -> None:
        """Updates skip non-finite minibatches (the weights stay as they were); stop when whole updates
        keep failing."""
        if stats["skipped_minibatches"]:
            warnings.warn(
                f"update {self.update}: skipped {stats['skipped_minibatches']} of {stats['minibatches']} "
                "minibatches with a non-finite loss or gradient",
                stacklevel=2,
            )
        all_bad = stats["skipped_minibatches"] == stats["minibatches"]
        self.bad_updates = self.bad_updates + 1 if all_bad else 0
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise TrainingError(
                f"{self.bad_updates} consecutive updates had only non-finite losses; stopped with the last good weights"
            )

    def maybe_evaluate(self) -> None:
        """Evaluate every --eval-interval steps and at the end; keep best_model.pth when the family's
        published metric improves (Crafter score; mean return elsewhere)."""
        cfg = self.cfg
        if self.global_step < self.next_eval and self.update < cfg.num_updates:
            return
        self.show_progress("evaluating", force=True)
        self.evaluations += 1
        record = cfg.eval_video and (self.evaluations - 1) % cfg.video_every == 0
        result = run_episodes(
            self.policy,
            self.eval_envs,
            cfg.eval_episodes,
            self.device,
            seed=cfg.seed,
            video_frames=cfg.video_frames if record else 0,
            should_stop=self.stop,
        )
        if not result.complete:
            self.evaluations -= 1
            return  # stopping: this evaluation is dropped (a resumed run redoes it); the run saves and exits
        while self.next_eval <= self.global_step:
            self.next_eval += cfg.eval_interval
        row = eval_row(result, cfg, self.global_step, "validation" if cfg.family == "procgen" else "eval")
        self.history.add(row)
        self.last_score = selection_score(row)
        improved = self.last_score > self.best_score
        if improved:
            self.best_score = self.last_score
            self.save("best_model.pth")
        metrics = {
            "eval/mean_return": row["mean_return"],
            "eval/std_return": row["std_return"],
            "eval/mean_length": row["mean_length"],
            "eval/score": self.last_score,
            "eval/best_score": self.best_score,
        }
        if "crafter_score" in row:
            metrics["eval/crafter_score"] = row["crafter_score"]
            metrics |= {f"eval/success_{k}": v for k, v in row["success_rates"].items()}
        self.logger.log(self.global_step, metrics)
        if record:
            video = write_video(result.frames, self.logdir / "videos" / f"eval_{self.global_step:09d}.mp4")
            self.logger.log_video(self.global_step, video)
        plot_learning_curve(self.logdir / "metrics.jsonl", self.logdir / "learning_curve.png", cfg.env)
        self.progress.write(
            f"eval @ {self.global_step:,}: return {row['mean_return']:.2f} +- {row['std_return']:.2f} over "
            f"{len(result.returns)} episodes, score {self.last_score:.2f}"
            f"{' (new best, saved best_model.pth)' if improved else ''}"
        )
        self.save("last.pth")

    def show_progress(self, phase: str, step: int | None = None, force: bool = False) -> None:
        step = self.global_step if step is None else step
        sps = (step - self.steps_at_start) / max(time.time() - self.start, 1e-9)
        recent = self.episodes.recent_returns
        ret = f"{np.mean(recent):.2f} ({len(recent)} eps)" if recent else "n/a"
        best = f"{self.best_score:.2f}" if self.last_score is not None else "n/a"
        self.progress.update(step, phase, sps, ret, best, force=force)

    def write_summary(self, stop_reason: str | None) -> dict:
        summary = {
            "global_step": self.global_step,
            "finished": stop_reason is None,
            "stopped_by": stop_reason,
            "best_eval_score": self.best_score,
            "last_eval_score": self.last_score,
            "sps": self.global_step / max(self.elapsed(), 1e-9),
            "seconds": self.elapsed(),
            "time_split_seconds": self.timing,
            "train_episodes": self.episodes.count,
            "return_last_100": float(np.mean(self.episodes.recent_returns)) if self.episodes.recent_returns else None,
            "pretrained_loaded": self.pretrained_loaded,
        } | self.episodes.crafter_metrics()
        atomic_write(self.logdir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        if stop_reason is None:
            print(
                f"done: {self.global_step:,} steps at {summary['sps']:.0f} sps; best eval score "
                f"{self.best_score:.2f}; checkpoints in {self.logdir}"
            )
        return summary

    def close(self) -> None:
        self.progress.close()
        self.envs.close()
        self.eval_envs.close()
        self.logger.close()
        plot_learning_curve(self.logdir / "metrics.jsonl", self.logdir / "learning_curve.png", self.cfg.env)


def load_run(argv: list[str] | None = None) -> tuple[Config, dict | None]:
    """The run the command line describes: a new run's Config, or a resumed run's Config and its checkpoint
    (loaded once)."""
    given = parse_flags(argv, __doc__)
    if "resume" not in given:
        return config_from_flags(given), None
    path = resolve_checkpoint_path(given["resume"], prefer="last.pth")
    payload = load_checkpoint(path)
    return resumed_config(given, payload["config"], path), payload


def train(cfg: Config, resume: dict | None = None) -> dict:
    """Run one training (or continue one from its checkpoint payload); -> the final summary."""
    return Trainer(cfg, resume).run()


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    try:
        summary = train(*load_run(argv))
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, EnvCrashError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stopped_by = summary["stopped_by"] or ""
    return 128 + signal.Signals[stopped_by] if stopped_by.startswith("SIG") else 0


if __name__ == "__main__":
    sys.exit(main())
