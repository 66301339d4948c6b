"""Frame stacking order and episode boundaries for every family, with the real games."""

import os

import numpy as np
import pytest

from config import Config
from env import make_vec_env, parse_env_id
from errors import UsageError
from vecenv import FrameStack, cpus_per_process


def test_parse_env_id():
    assert parse_env_id("crafter").name == "crafter"
    assert parse_env_id("procgen/coinrun").game == "coinrun"
    assert parse_env_id("atari/Breakout").game == "breakout"
    assert parse_env_id("atari/MsPacman").game == "ms_pacman"
    assert parse_env_id("ALE/SpaceInvaders-v5").game == "space_invaders"
    for bad in ("procgen/foo", "atari/NotAGame", "minecraft", "atari/"):
        with pytest.raises(UsageError):
            parse_env_id(bad)


def test_frame_stack_order_and_episode_restart():
    fs = FrameStack(2, (1, 1, 1), 3)
    fs.reset(np.array([[[[1]]], [[[5]]]], np.uint8))
    assert fs.stack[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 0, 5]]
    frames = np.array([[[[2]]], [[[9]]]], np.uint8)  # env 1 ended: 9 is its next episode's first frame
    final_frames = np.array([[[[2]]], [[[6]]]], np.uint8)
    final = fs.step(frames, final_frames, np.array([False, True]))
    assert fs.stack[:, :, 0, 0].tolist() == [[0, 1, 2], [0, 0, 9]]  # oldest first; env 1 restarted
    assert final[1, :, 0, 0].tolist() == [0, 5, 6]  # the true last stack of env 1's episode


def check_stacking(envs, steps, frame_channels):
    """Shared checks: uint8 shape, a fresh episode is zeros but its newest frame, each step shifts by one
    frame, and where an episode ended the next obs restarts while final_obs continues the old stack."""
    c = frame_channels
    obs = envs.reset()
    assert obs.dtype == np.uint8 and obs.shape == (envs.num_envs, *envs.obs_shape)
    assert not obs[:, :-c].any() and obs[:, -c:].any()
    rng = np.random.default_rng(0)
    ends, episodes = 0, []
    for _ in range(steps):
        result = envs.step(rng.integers(0, envs.num_actions, envs.num_envs))
        ended = result.terminated | result.truncated
        live = ~ended
        np.testing.assert_array_equal(result.obs[live, :-c], obs[live, c:])
        np.testing.assert_array_equal(result.final_obs[ended, :-c], obs[ended, c:])
        for i in np.flatnonzero(ended):
            ends += 1
            assert not result.obs[i, :-c].any()
        episodes += result.episodes
        obs = result.obs
    return ends, episodes


def test_crafter_stacking_and_episodes():
    import crafter

    with make_vec_env("crafter", 2, seed=7, history_length=3) as envs:
        obs = envs.reset()
        direct = crafter.Env(seed=7).reset().transpose(2, 0, 1)
        np.testing.assert_array_equal(obs[0, -3:], direct)  # same seed, same world as crafter itself
        ends, episodes = check_stacking(envs, 450, 3)
    assert ends >= 1 and len(episodes) == ends
    ep = episodes[0]
    assert set(ep.achievements) >= {"collect_wood", "place_table", "wake_up"} and len(ep.achievements) == 22


def test_procgen_stacking_and_validation_levels():
    with make_vec_env("procgen/bigfish", 4, seed=0, history_length=2) as envs:
        ends, episodes = check_stacking(envs, 400, 3)
    assert ends >= 1 and len(episodes) == ends
    from evaluation import make_eval_env

    config = Config(env="procgen/bigfish", history_length=2, distribution_mode="easy", start_level=0, num_levels=200)
    with make_eval_env(config, 2, seed=0) as eval_envs:  # validation levels: the 1000 after the training range
        assert (eval_envs.kwargs["start_level"], eval_envs.kwargs["num_levels"]) == (200, 1000)
    with make_eval_env(config, 2, seed=0, levels=(0, 200)) as train_levels:
        assert (train_levels.kwargs["start_level"], train_levels.kwargs["num_levels"]) == (0, 200)
        first_train = train_levels.reset()
    with make_eval_env(config, 2, seed=0) as unseen:
        assert not np.array_equal(unseen.reset(), first_train)  # other levels, other first frames


def test_atari_stacking_full_game_returns_and_episodic_life():
    with make_vec_env("atari/Breakout", 2, seed=0, history_length=4, episodic_life=True) as envs:
        assert envs.obs_shape == (4, 84, 84)
        obs = envs.reset()
        rng = np.random.default_rng(0)
        rewards, terminations, episodes = np.zeros(2), 0, []
        for _ in range(1500):
            result = envs.step(rng.integers(0, envs.num_actions, 2))
            np.testing.assert_array_equal(result.obs[~result.terminated, :-1], obs[~result.terminated, 1:])
            rewards += result.rewards
            terminations += int(result.terminated.sum())
            episodes += result.episodes
            obs = result.obs
    assert len(episodes) >= 1
    assert terminations >= 5 * len(episodes)  # every lost life ends a training episode, 5 lives a game
    assert all(float(ep.ret).is_integer() and ep.ret >= 0 for ep in episodes)  # raw, unclipped points
    assert episodes[0].length > 100  # a full game spans all its lives


def test_atari_evaluation_plays_full_games():
    with make_vec_env("atari/Breakout", 2, seed=0, history_length=4, evaluation=True) as envs:
        assert envs.episodic_life is False
        check_stacking(envs, 300, 1)


def test_crafter_vec_env_plays_crafters_own_games(monkeypatch):
    """Worlds, frames, rewards and episode ends through the workers' fast paths equal crafter as
    installed (its own world generation and drawing), stepped here with the same seeds and actions."""
    import crafter
    import crafter.worldgen

    from env_crafter import CrafterVecEnv, _import_crafter

    actions = np.random.default_rng(1).integers(0, 17, size=(500, 2))
    with CrafterVecEnv(2, seed=11, history_length=1, num_workers=1) as envs:
        _import_crafter()  # crafter with creatures kept in insertion order, as in the workers
        monkeypatch.setattr(crafter.env, "worldgen", crafter.worldgen)  # crafter's own generation, here only
        games = [crafter.Env(seed=11 + i) for i in range(2)]
        np.testing.assert_array_equal(envs.reset(), np.stack([g.reset() for g in games]).transpose(0, 3, 1, 2))
        episodes = 0
        for a in actions:
            result = envs.step(a)
            for i, game in enumerate(games):
                obs, reward, done, info = game.step(int(a[i]))
                assert result.rewards[i] == np.float32(reward)
                assert result.terminated[i] | result.truncated[i] == done
                np.testing.assert_array_equal(result.final_obs[i], obs.transpose(2, 0, 1))
                if done:
                    episodes += 1
                    obs = game.reset()
                np.testing.assert_array_equal(result.obs[i], obs.transpose(2, 0, 1))
    assert episodes >= 2  # resets were compared too


def test_every_atari_life_starts_with_fire():
    """ALE presses FIRE only when a game starts; after a lost life Breakout waits for FIRE forever, so the env
    presses it (CleanRL's FireResetEnv does the same): a policy that never fires still finishes games."""
    with make_vec_env("atari/Breakout", 2, seed=0, history_length=4, episodic_life=True) as envs:
        envs.reset()
        rng = np.random.default_rng(0)
        games = []
        for _ in range(2000):
            games += envs.step(rng.choice([0, 2, 3], 2)).episodes  # NOOP, RIGHT, LEFT: never FIRE
    assert len(games) >= 4


def test_env_workers_share_the_cores_this_process_may_use(monkeypatch):
    """Under torchrun every rank used to start one worker per core of the machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpus_per_process() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert cpus_per_process() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpus_per_process() == 8
