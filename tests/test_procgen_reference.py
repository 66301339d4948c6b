"""Procgen's levels as the original procgen plays them: a recorded reference (tests/data/procgen_reference.npz,
procgen-mirror 0.10.7 on Python 3.11: 4 envs of starpilot, coinrun, bigfish and bossfight, start level 0, 200
levels, easy, rand_seed 0, 300 steps of `np.random.default_rng(0).integers(0, 15, size=(300, 4))` actions; per
step each frame's blake2b-64 hash of its HWC bytes, the rewards and the episode ends). pixelppo's Procgen env must
give the same frames, rewards and episode ends for the same (game, start level, levels, mode, seed, actions): the
check any other Procgen backend (issue 40: envpool, procgen-gym) has to pass, or say exactly where it differs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from env import make_vec_env

REFERENCE = np.load(Path(__file__).parent / "data" / "procgen_reference.npz")
PARAMS = json.loads(str(REFERENCE["params"]))


def frame_hashes(stacks: np.ndarray) -> np.ndarray:
    """(N, 3, 64, 64) frames -> (N,) blake2b-64 of each frame's HWC bytes, as the reference was recorded."""
    frames = np.ascontiguousarray(stacks.transpose(0, 2, 3, 1))
    digests = [hashlib.blake2b(frame.tobytes(), digest_size=8).digest() for frame in frames]
    return np.array([np.frombuffer(d, dtype="<u8")[0] for d in digests], dtype=np.uint64)


@pytest.mark.parametrize("game", PARAMS["games"])
def test_procgen_plays_the_recorded_levels_frame_for_frame(game):
    envs = make_vec_env(
        f"procgen/{game}",
        PARAMS["num_envs"],
        PARAMS["rand_seed"],
        history_length=1,
        distribution_mode=PARAMS["distribution_mode"],
        start_level=PARAMS["start_level"],
        num_levels=PARAMS["num_levels"],
    )
    with envs:
        hashes = [frame_hashes(envs.reset())]
        rewards, ends = [], []
        for actions in REFERENCE["actions"]:
            step = envs.step(actions.astype(np.int64))
            hashes.append(frame_hashes(step.obs))
            rewards.append(step.rewards)
            ends.append(step.terminated | step.truncated)
    np.testing.assert_array_equal(np.array(ends), REFERENCE[f"{game}/firsts"])
    np.testing.assert_array_equal(np.array(rewards), REFERENCE[f"{game}/rewards"])
    np.testing.assert_array_equal(np.array(hashes), REFERENCE[f"{game}/hashes"])
    assert REFERENCE[f"{game}/firsts"].any()  # the reference holds episode ends (new levels), not one level only
