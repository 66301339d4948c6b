"""Train a PPO agent on a pixel game: `python train.py --logdir logs/run_1`.

Collect a rollout from vectorized envs -> GAE -> clipped PPO epochs -> log; every --eval-interval steps
evaluate on separate envs and keep `best_model.pth` whenever the family's published metric improves.
Settings come from flags, `--config FILE.yaml` or `--preset NAME` (configs/NAME.yaml); see config.py.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from config import Config, config_from_flags, parse_flags, resumed_config, validate, write_run_file
from errors import UsageError

if __name__ == "__main__":  # --help and a mistyped flag are answered before torch, timm and wandb load (seconds)
    parse_flags(sys.argv[1:], __doc__)

import numpy as np
import torch

from agent import PPO, scheduled_lr
from augment import COLOUR_AUGMENTATIONS
from buffer import RewardScaler, RolloutBuffer
from checkpoint import (
    CheckpointError,
    RunState,
    atomic_write,
    load_checkpoint,
    resolve_checkpoint_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_arrays,
    to_tensors,
)
from distributed import Ranks
from env import make_vec_env
from evaluation import EvalResult, EvalStats, eval_row, make_eval_env, run_episodes, selection_score
from hardware import precision_note, resolve_device, resolve_precision
from policy import ActorCritic, Memory, PolicySpec
from rollout import HostToDevice, PolicyStep, collect_rollout
from runlog import EpisodeLog, Progress, RunLogger, device_name, format_duration, prepare_logdir, truncate_metrics
from vecenv import EnvCrashError, EpisodeStats, VecEnv, cpus_per_process
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


def make_train_env(cfg: Config, rank: int = 0) -> VecEnv:
    """This rank's training envs: seeds (Crafter worlds, Procgen level streams, ALE) distinct per rank."""
    return make_vec_env(
        cfg.env,
        cfg.num_envs,
        cfg.seed + rank * cfg.num_envs,
        cfg.history_length,
        max_crashes=cfg.max_env_crashes,
        distribution_mode=cfg.distribution_mode,
        start_level=cfg.start_level,
        num_levels=cfg.num_levels,
        episodic_life=cfg.episodic_life,
        repeat_action_probability=cfg.sticky_actions,
    )


def build_policy(
    cfg: Config, envs: VecEnv, device: torch.device, precision: str, load_pretrained: bool, warn: bool
) -> ActorCritic:
    """The network the run's settings describe, for the envs' frames and actions, set up for training: its
    arithmetic, `--compile`, and no feature cache where the update needs frames (`--augment`). `warn`: this
    process reports what the settings imply."""
    spec = PolicySpec(
        cfg.backbone, envs.obs_shape, envs.frame_channels, envs.num_actions, head_hidden=cfg.head_hidden,
        freeze_backbone=cfg.freeze_backbone, feature_norm=cfg.feature_norm, trunk_hidden=cfg.trunk_hidden,
        value_norm=cfg.value_norm, image_size=cfg.image_size, feature_level=cfg.feature_level,
        recurrent=cfg.recurrent, recurrent_size=cfg.recurrent_size,
    )  # fmt: skip
    if cfg.augment in COLOUR_AUGMENTATIONS and spec.frame_channels != 3:
        raise UsageError(
            f"--augment {cfg.augment} needs RGB frames; {cfg.env} gives {spec.frame_channels}-channel ones"
        )
    policy = ActorCritic(spec, load_pretrained, cfg.pretrained_file if load_pretrained else "").to(device)
    policy.precision = precision
    if cfg.compile:
        policy.backbone.compile()  # in place: checkpoints keep the plain parameter names
    if cfg.augment != "none":
        if policy.caches_features and warn:
            warnings.warn(
                f"--augment {cfg.augment} with a frozen backbone: the update must see augmented frames, so the "
                "backbone's features are no longer cached (it runs in every epoch)",
                stacklevel=2,
            )
        policy.cache_features = False
    return policy


def make_buffer(cfg: Config, policy: ActorCritic, envs: VecEnv, device: torch.device) -> RolloutBuffer:
    """Storage for one rollout of these envs: frames or, with a frozen backbone, its features; the recurrent
    state at step 0 when the policy has one."""
    feature_dim = policy.feature_dim if policy.caches_features else None
    return RolloutBuffer(
        cfg.num_steps, envs.num_envs, envs.obs_shape, device, feature_dim, envs.frame_channels, policy.state_size
    )


class Trainer:
    """One run: builds envs, policy and PPO from a Config (and the checkpoint payload of a resumed run), then
    `run()`s collect -> GAE -> update -> log -> evaluate -> checkpoint until the step budget is spent.
    `envs` / `eval_envs` replace the games the config names (tests pass toy games).

    Under torchrun every rank runs a Trainer on its own envs and buffer; gradients are averaged over ranks,
    steps count all ranks' envs, and rank 0 alone evaluates and writes the logdir."""

    def __init__(
        self, cfg: Config, resume: dict | None = None, envs: VecEnv | None = None, eval_envs: VecEnv | None = None
    ):
        validate(cfg)
        self.cfg = cfg
        self.ranks = Ranks()
        self.device = self.ranks.device(resolve_device(cfg.device))
        self.ranks.start(self.device, cfg.dist_timeout)
        self.ranks.check_same(
            cfg.public_dict(),
            "settings",
            "each machine resolves the default recipe from its own hardware (a GPU or none): give every rank the same "
            "--preset or --config",
        )
        main = self.ranks.is_main
        self.logdir = Path(self.ranks.broadcast(str(prepare_logdir(cfg)) if main else None))
        seed_everything(cfg.seed)
        self.precision = resolve_precision(cfg.precision, self.device) if main else None
        self.precision = self.ranks.broadcast(self.precision)  # one arithmetic for all ranks (rank 0's choice)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.fp32_precision = "tf32"  # fp32 matrix products on tensor cores
            torch.backends.cudnn.benchmark = True  # shapes are fixed: cuDNN times its kernels once per shape
        if main:
            note = precision_note(cfg.precision, self.precision, self.device)
            write_run_file(cfg, self.logdir / "config.yaml", f"precision {note} on this machine")

        self.envs = envs or make_train_env(cfg, self.ranks.rank)
        num_envs = self.envs.num_envs  # this rank's: the envs, not the settings, size what the loop keeps
        # evaluation only runs between updates: a quarter of the cores' worker processes (~100 MB each) do
        eval_workers = max(1, cpus_per_process() // 4)
        self.eval_envs = (
            None
            if not main
            else eval_envs
            or make_eval_env(cfg, min(cfg.eval_envs, cfg.eval_episodes), cfg.seed, num_workers=eval_workers)
        )
        try:  # a resumed run's weights come from its checkpoint
            load_pretrained = cfg.pretrained and resume is None
            self.policy = build_policy(cfg, self.envs, self.device, self.precision, load_pretrained, warn=main)
        except UsageError:
            self.envs.close()
            raise
        self.spec = self.policy.spec
        self.ranks.broadcast_parameters(self.policy)  # one starting point (pretrained weights load on every rank)
        if self.ranks.rank:
            torch.manual_seed(cfg.seed + self.ranks.rank)  # each rank samples its own actions
        self.pretrained_loaded = resume["pretrained_loaded"] if resume else self.policy.pretrained_loaded
        if cfg.freeze_backbone and not self.pretrained_loaded and main:
            warnings.warn(
                f"FROZEN BACKBONE WITHOUT PRETRAINED WEIGHTS: {cfg.backbone} keeps its random init and only the "
                "heads learn; give --pretrained-file, or train the backbone with --no-freeze-backbone",
                stacklevel=2,
            )
        # each rank draws its own minibatch orders and augmentation offsets (rank 0: those of one process)
        self.ppo = PPO(self.policy, cfg, seed=cfg.seed + self.ranks.rank, ranks=self.ranks)
        self.buffer = make_buffer(cfg, self.policy, self.envs, self.device)
        self.to_device = HostToDevice(self.device)
        self.policy_step = PolicyStep(self.policy, num_envs, self.device, cfg.cuda_graph and not cfg.compile)
        reduce = self.ranks.sum if self.ranks.active else None  # every rank normalizes with all envs' statistics
        self.scaler = RewardScaler(cfg.reward_mode, num_envs, cfg.reward_norm_gamma or cfg.gamma, reduce=reduce)
        self.history = EvalStats(self.logdir)
        self.episodes = EpisodeLog()

        self.global_batch = cfg.num_steps * num_envs * self.ranks.world  # steps of one update, all ranks together
        self.num_updates = max(1, math.ceil(cfg.steps / self.global_batch))
        self.state = RunState(next_eval=cfg.eval_interval)
        self.rollout_step = 0  # steps of the rollout in the buffer: 0 < it < num_steps when a stop cut it short
        self.rollout_episodes: list[EpisodeStats] = []  # this rank's episodes finished during that rollout
        self.memory = self.policy.fresh_memory(num_envs)
        self.obs = self.restore(resume) if resume else self.envs.reset()
        info = {"pretrained_loaded": self.pretrained_loaded, "precision_used": self.precision}
        wandb_id = resume["resume"]["wandb_id"] if resume else None
        self.logger = RunLogger(cfg, self.logdir, wandb_id, info, enabled=main)
        self.stop = StopSignal()
        self.start = time.time()
        self.steps_at_start = self.state.global_step
        step = self.state.global_step
        self.state.stretches.append(
            {"from_step": step, "to_step": step, "seconds": 0.0, "device": device_name(self.device),
             "precision": self.precision}
        )  # fmt: skip
        self.evaluation_seconds_at_start = self.state.timing["evaluation"]
        total = self.num_updates * self.global_batch
        self.progress = Progress(total, self.state.global_step, cfg.progress_interval, quiet=not main)

    # ---------------------------------------------------------------------------------- loop

    def run(self) -> dict:
        """Train until --steps (or --stop-after, or a signal); -> summary, also in `summary.json`."""
        cfg = self.cfg
        ranks = f" x {self.ranks.world} processes" if self.ranks.active else ""
        recipe = f"preset {cfg.preset}, " if cfg.preset else ""
        self.say(
            f"pixelppo: {cfg.env} for {cfg.steps:,} steps on {self.device}, {cfg.num_envs} envs{ranks}, {recipe}"
            f"backbone {cfg.backbone}, precision {precision_note(cfg.precision, self.precision, self.device)} "
            f"-> {self.logdir}"
        )
        self.start = last_save = time.time()
        stop_reason = None
        try:
            with self.stop:
                while True:
                    if self.evaluation_due() and not self.evaluate():
                        stop_reason = self.signal_name()  # the evaluation is redone by --resume
                        break
                    state = self.state
                    if state.update >= self.num_updates:
                        break
                    if self.ranks.any(time.time() - last_save > cfg.save_interval * 60):
                        self.save("last.pth")
                        last_save = time.time()
                    if cfg.stop_after and state.global_step >= cfg.stop_after:
                        stop_reason = f"--stop-after {cfg.stop_after:,}"
                        break
                    if not self.train_one_update():
                        stop_reason = self.signal_name()
                        break
                    first_or_last = self.state.update - 1 == self.steps_at_start // self.global_batch
                    self.show_progress("collecting", force=first_or_last or self.state.update == self.num_updates)
            self.save("last.pth")
        except (EnvCrashError, TrainingError) as e:
            if self.ranks.active:  # the other ranks may be gone: no collective checkpoint, the last save stays
                raise TrainingError(f"{e}; the last checkpoint is from the last save") from e
            saved = self.save("last.pth", with_env_state=False)
            raise TrainingError(f"{e}; {'saved' if saved else 'could not save'} {self.logdir / 'last.pth'}") from e
        except KeyboardInterrupt:
            step = self.state.global_step
            print(f"stopped at once at step {step:,}; last.pth is from the last save", file=sys.stderr)
            raise
        finally:
            self.close()
        if stop_reason:
            step = self.state.global_step
            self.say(f"stopped ({stop_reason}) at step {step:,}; continue with --resume {self.logdir}")
        return self.write_summary(stop_reason)

    def train_one_update(self) -> bool:
        """Collect one rollout (or the rest of one a stop cut short) and learn from it; False when a stop signal
        cut the rollout (the steps so far stay in the buffer and the checkpoint, and `--resume` goes on from them)
        or the update (see `learn`)."""
        cfg = self.cfg
        if self.rollout_step < cfg.num_steps:
            self.collect()
            if self.rollout_step < cfg.num_steps:
                return False
        finished = [episode for rank in self.ranks.gather(self.rollout_episodes) for episode in rank]  # all ranks'
        return self.learn(finished)

    def collect(self) -> None:
        """Go on filling the buffer from step `rollout_step` until it is full or a stop signal comes."""
        cfg = self.cfg
        self.obs, self.memory, finished, self.rollout_step = collect_rollout(
            self.envs,
            self.policy,
            self.buffer,
            self.obs,
            self.memory,
            self.scaler,
            self.state.timing,
            self.to_device,
            self.stopping,
            on_step=lambda t: self.show_progress(
                "collecting", self.state.global_step + (t + 1) * self.global_batch // cfg.num_steps
            ),
            step=self.policy_step,
            start=self.rollout_step,
        )
        self.rollout_episodes += finished

    def learn(self, finished: list) -> bool:
        """GAE and the PPO update on the collected rollout, then log its `finished` episodes (every rank's). A stop
        signal between two minibatches puts the weights, optimizer and minibatch RNG back as they were before this
        update and keeps the rollout for the checkpoint, so that `--resume` repeats the update exactly; -> False
        then."""
        cfg = self.cfg
        lr = scheduled_lr(cfg, self.state.update / self.num_updates)
        self.ppo.set_lr(lr)
        self.show_progress("updating", self.state.global_step + self.global_batch)
        tic = time.perf_counter()
        before = self.ppo.state()
        with torch.inference_mode():
            last_values = self.policy.value(self.to_device(self.obs), self.memory.state, self.memory.starts)
        self.buffer.compute_advantages(last_values, cfg.gamma, cfg.gae_lambda)
        stats = self.ppo.update(self.buffer, should_stop=self.stopping)
        self.state.timing["update"] += time.perf_counter() - tic
        if stats is None:
            self.ppo.load_state(before)
            return False
        self.state.global_step += self.global_batch
        self.state.update += 1
        self.rollout_step, self.rollout_episodes = 0, []
        self.episodes.add(finished)
        self.check_finite(stats)
        self.ranks.check_in_sync(self.policy)

        metrics = (
            {f"losses/{k}": v for k, v in stats.items()}
            | {"charts/learning_rate": lr, "charts/episodes": self.episodes.count}
            | {"perf/sps": self.state.global_step / max(self.training_seconds(), 1e-9)}
            | {f"perf/{k}_seconds": v for k, v in self.state.timing.items()}
            | self.episodes.crafter_metrics()
        )
        if self.episodes.recent_returns:
            metrics["charts/return_last_100"] = float(np.mean(self.episodes.recent_returns))
        if finished:
            metrics["charts/episode_return"] = float(np.mean([e.ret for e in finished]))
            metrics["charts/episode_length"] = float(np.mean([e.length for e in finished]))
        self.logger.log(self.state.global_step, metrics)
        return True

    def check_finite(self, stats: dict) -> None:
        """Updates skip non-finite minibatches (the weights stay as they were); stop when whole updates
        keep failing."""
        if stats["skipped_minibatches"]:
            warnings.warn(
                f"update {self.state.update}: skipped {stats['skipped_minibatches']} of {stats['minibatches']} "
                "minibatches with a non-finite loss or gradient",
                stacklevel=2,
            )
        all_bad = stats["skipped_minibatches"] == stats["minibatches"]
        self.state.bad_updates = self.state.bad_updates + 1 if all_bad else 0
        if self.state.bad_updates >= self.cfg.max_bad_updates:
            raise TrainingError(
                f"{self.state.bad_updates} consecutive updates had only non-finite losses; stopped with the last good "
                "weights"
            )

    def evaluation_due(self) -> bool:
        """Every --eval-interval steps, and once at the end."""
        state = self.state
        final = state.update >= self.num_updates and state.last_eval_step != state.global_step
        return state.global_step >= state.next_eval or final

    def evaluate(self) -> bool:
        """Evaluate (rank 0 plays, every rank learns the outcome); keep best_model.pth when the family's published
        metric improves (Crafter score; mean return elsewhere). -> False when a stop signal cut it short: nothing
        of it is kept, and it stays due, so a resumed run redoes it at the same step."""
        cfg = self.cfg
        self.show_progress("evaluating", force=True)
        record = cfg.eval_video and self.state.evaluations % cfg.video_every == 0
        result = None
        tic = time.time()
        if self.ranks.is_main:
            result = self.play_evaluation(record)
            self.ranks.beat(done=True, stop=False)
        else:  # beat with rank 0 at each of its evaluation steps until it is done, however long that takes
            while not self.ranks.beat(done=False, stop=self.stop())[0]:
                pass
        seconds = time.time() - tic
        self.state.timing["evaluation"] += seconds
        row = None if result is None else eval_row(result, cfg, self.state.global_step, self.eval_set_name())
        score = self.ranks.broadcast(None if row is None else selection_score(row))
        if score is None:
            return False
        self.state.evaluations += 1
        self.state.last_eval_step = self.state.global_step
        while self.state.next_eval <= self.state.global_step:
            self.state.next_eval += cfg.eval_interval
        self.state.last_score = score
        improved = score > self.state.best_score
        if improved:
            self.state.best_score = score
            self.save("best_model.pth")
        if self.ranks.is_main:
            self.report_evaluation(row, result, improved, record, seconds)
        self.save("last.pth")
        return True

    def eval_set_name(self) -> str:
        return "validation" if self.cfg.family == "procgen" else "eval"

    def play_evaluation(self, record: bool) -> EvalResult | None:
        """Episodes on the evaluation envs; None when a stop request cut them short."""
        result = run_episodes(
            self.policy,
            self.eval_envs,
            self.cfg.eval_episodes,
            self.device,
            seed=self.cfg.seed,
            video_frames=self.cfg.video_frames if record else 0,
            on_step=lambda finished, _: self.show_progress(f"evaluating: {finished}/{self.cfg.eval_episodes} episodes"),
            should_stop=lambda: self.ranks.beat(done=False, stop=self.stop())[1],  # a signal to any rank stops it
        )
        return result if result.complete else None

    def report_evaluation(self, row: dict, result: EvalResult, improved: bool, record: bool, seconds: float) -> None:
        """eval_stats, metrics, video, figures (learning curve; Crafter: success rates) and one line about an
        evaluation."""
        self.history.add(row)
        metrics = {
            "eval/mean_return": row["mean_return"],
            "eval/std_return": row["std_return"],
            "eval/mean_length": row["mean_length"],
            "eval/score": self.state.last_score,
            "eval/best_score": self.state.best_score,
        }
        if "crafter_score" in row:
            metrics["eval/crafter_score"] = row["crafter_score"]
            metrics |= {f"eval/success_{k}": v for k, v in row["success_rates"].items()}
        self.logger.log(self.state.global_step, metrics)
        if record:
            video = write_video(result.frames, self.logdir / "videos" / f"eval_{self.state.global_step:09d}.mp4")
            self.logger.log_video(self.state.global_step, video)
        self.logger.log_figures(self.state.global_step, self.cfg.env)
        self.progress.write(
            f"eval @ {self.state.global_step:,}: return {row['mean_return']:.2f} +- {row['std_return']:.2f} over "
            f"{len(result.returns)} episodes in {format_duration(seconds)}, score {self.state.last_score:.2f}"
            f"{' (new best, saved best_model.pth)' if improved else ''}"
        )

    def show_progress(self, phase: str, step: int | None = None, force: bool = False) -> None:
        """One progress line (or the bar's postfix): steps, training steps/s of this process (evaluation time not
        counted), the phase, recent returns, the best evaluation."""
        step = self.state.global_step if step is None else step
        evaluating = self.state.timing["evaluation"] - self.evaluation_seconds_at_start
        sps = (step - self.steps_at_start) / max(time.time() - self.start - evaluating, 1e-9)
        recent = self.episodes.recent_returns
        ret = f"{np.mean(recent):.2f} ({len(recent)} eps)" if recent else "n/a"
        best = f"{self.state.best_score:.2f}" if self.state.last_score is not None else "n/a"
        self.progress.update(step, phase, sps, ret, best, force=force)

    def say(self, message: str) -> None:
        """One line on stdout, from rank 0 only."""
        if self.ranks.is_main:
            print(message, flush=True)

    def elapsed(self) -> float:
        return self.state.elapsed_before + time.time() - self.start

    def training_seconds(self) -> float:
        """Seconds spent training (collecting and updating) over the whole run, evaluations left out."""
        return self.elapsed() - self.state.timing["evaluation"]

    def stopping(self) -> bool:
        """A stop signal reached this rank or any other: all ranks stop at the same step."""
        return self.ranks.any(self.stop())

    def signal_name(self) -> str:
        """The signal that stopped the run, whichever rank received it (every rank exits with its code)."""
        return next(name for name in self.ranks.gather(self.stop.received) if name)

    def write_summary(self, stop_reason: str | None) -> dict:
        self.end_stretch_here()
        best = self.state.best_score
        summary = {
            "global_step": self.state.global_step,
            "finished": stop_reason is None,
            "stopped_by": stop_reason,
            "best_eval_score": best if math.isfinite(best) else None,  # None: no evaluation yet
            "last_eval_score": self.state.last_score,
            "sps": self.state.global_step / max(self.training_seconds(), 1e-9),  # training: evaluations not counted
            "seconds": self.elapsed(),  # all of it, evaluations included
            "time_split_seconds": self.state.timing,
            "train_episodes": self.episodes.count,
            "return_last_100": float(np.mean(self.episodes.recent_returns)) if self.episodes.recent_returns else None,
            "pretrained_loaded": self.pretrained_loaded,
            "precision_used": self.precision,
            "stretches": self.state.stretches,  # where and in what precision each process trained
        }
        summary |= self.episodes.crafter_summary() | self.history.crafter_summary()  # Crafter: training vs evaluation
        if not self.ranks.is_main:
            return summary
        atomic_write(self.logdir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        if stop_reason is None:
            evaluating = format_duration(self.state.timing["evaluation"])
            self.say(
                f"done: {self.state.global_step:,} steps at {summary['sps']:.0f} training steps/s (evaluations took "
                f"{evaluating} more); best eval score {self.state.best_score:.2f}; checkpoints in {self.logdir}"
            )
        return summary

    def close(self) -> None:
        self.progress.close()
        self.envs.close()
        self.logger.close()
        if self.ranks.is_main:
            self.eval_envs.close()
            plot_learning_curve(self.logdir / "metrics.jsonl", self.logdir / "learning_curve.png", self.cfg.env)

    # ---------------------------------------------------------------------------- checkpoints

    def local_state(self, with_env_state: bool) -> dict:
        """What this rank alone has: its games, observations, recurrent memory, reward sums, RNG streams, and the
        rollout in the buffer when a stop came before its update: the part collected so far (only where the games'
        state is saved, since the rest of the rollout continues those games) or the whole of it."""
        env_state = self.envs.get_state() if with_env_state else None
        state = None if self.memory.state is None else self.memory.state.cpu()
        keep = self.rollout_step == self.cfg.num_steps or (self.rollout_step > 0 and env_state is not None)
        return {
            "rng": rng_state(self.ppo.generator, self.device),
            "reward_scaler": self.scaler.state_dict(),
            "obs": torch.from_numpy(self.obs.copy()),
            "memory": {"state": state, "starts": self.memory.starts.cpu()},
            "env_state": to_tensors(env_state),
            "pending_rollout": self.buffer.state_dict() if keep else None,
            "rollout_steps": self.rollout_step if keep else 0,
            "rollout_episodes": [asdict(e) for e in self.rollout_episodes] if keep else [],
        }

    def end_stretch_here(self) -> None:
        """This process's stretch of the run reaches the current step."""
        stretch = self.state.stretches[-1]
        stretch["to_step"], stretch["seconds"] = self.state.global_step, time.time() - self.start

    def checkpoint_payload(self, ranks: list[dict]) -> dict:
        self.end_stretch_here()
        run_state = self.state.to_payload(self.elapsed())
        return run_state | {
            "config": self.cfg.public_dict(),
            "policy_spec": self.spec.to_dict(),
            "model": self.policy.state_dict(),
            "optimizer": self.ppo.optimizer.state_dict(),
            "pretrained_loaded": self.pretrained_loaded,
            "precision_used": self.precision,
            "resume": run_state["resume"]
            | {
                "episodes": self.episodes.state_dict(),
                "ranks": ranks,  # local_state() of every rank, in rank order
                "wandb_id": self.logger.wandb_id,
                "ucb": None if self.ppo.ucb is None else self.ppo.ucb.state_dict(),  # the same on every rank
            },
        }

    def save(self, name: str, with_env_state: bool = True) -> bool:
        """Write a checkpoint atomically (rank 0, with every rank's own state); a failed write (disk full...)
        keeps the previous file and is reported, never fatal."""
        ranks = self.ranks.gather_to_main(self.local_state(with_env_state))
        if not self.ranks.is_main:
            return True
        path = self.logdir / name
        try:
            save_checkpoint(path, self.checkpoint_payload(ranks))
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
            run_state, resume = RunState.from_payload(payload), payload["resume"]
            ranks = resume["ranks"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.cfg.resume} cannot be resumed: {str(e).splitlines()[0][:200]}") from e
        if len(ranks) != self.ranks.world:
            raise UsageError(
                f"{self.cfg.resume} was written by {len(ranks)} process(es), not {self.ranks.world}: resume it with "
                f"as many (torchrun --nproc_per_node {len(ranks)}, or plain python for 1)"
            )
        mine = ranks[self.ranks.rank]
        self.state = run_state
        set_rng_state(mine["rng"], self.ppo.generator, self.device)
        self.scaler.load_state_dict(mine["reward_scaler"])
        self.episodes.load_state_dict(resume["episodes"])
        if self.ppo.ucb is not None:
            self.ppo.ucb.load_state_dict(resume["ucb"])
        if mine.get("pending_rollout") is not None:  # older files kept only whole rollouts, without their episodes
            self.buffer.load_state_dict(mine["pending_rollout"])
            self.rollout_step = mine.get("rollout_steps", self.cfg.num_steps)
            self.rollout_episodes = [EpisodeStats(**e) for e in mine.get("rollout_episodes", [])]
        memory = mine["memory"]["state"]
        self.memory = Memory(
            None if memory is None else memory.to(self.device), mine["memory"]["starts"].to(self.device)
        )
        if self.ranks.is_main:
            self.history.load(self.state.global_step)
            truncate_metrics(self.logdir / "metrics.jsonl", self.state.global_step)
            print(f"resuming {self.logdir} at step {self.state.global_step:,}")
        if mine["env_state"] is None:
            warnings.warn(f"{self.cfg.env} game state cannot be saved: the resumed run starts new games", stacklevel=2)
            return self.envs.reset()
        return self.envs.set_state(to_arrays(mine["env_state"]))


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
    """Run one training (or continue one from its checkpoint payload); -> the final summary. Under torchrun
    every process calls it; the process group ends with it."""
    try:
        return Trainer(cfg, resume).run()
    finally:
        Ranks().close()


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    try:
        cfg, resume = load_run(argv)
        summary = train(cfg, resume)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, EnvCrashError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if resume and resume["global_step"] >= cfg.steps and summary["finished"] and Ranks().is_main:
        print(
            f"{cfg.logdir} had already trained its --steps {cfg.steps:,}; a larger --steps trains it on, e.g. "
            f"python train.py --resume {cfg.logdir} --steps {2 * cfg.steps}"
        )
    stopped_by = summary["stopped_by"] or ""
    return 128 + signal.Signals[stopped_by] if stopped_by.startswith("SIG") else 0


if __name__ == "__main__":
    sys.exit(main())
