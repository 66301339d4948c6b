"""The vectorized Crafter world generation against crafter's own, seed by seed."""

import crafter.worldgen
import numpy as np
import pytest

import crafter_fast
from env_crafter import make_crafter


def world_snapshot(env) -> dict:
    world = env._world
    return {
        "materials": world._mat_map.copy(),
        "object_map": world._obj_map.copy(),
        "objects": [(type(obj).__name__, tuple(obj.pos.tolist()), obj.health) for obj in world.objects],
        "rng": world.random.get_state()[1:],
    }


def assert_same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["materials"], b["materials"])
    np.testing.assert_array_equal(a["object_map"], b["object_map"])
    assert a["objects"] == b["objects"]
    np.testing.assert_array_equal(a["rng"][0], b["rng"][0])
    assert a["rng"][1:] == b["rng"][1:]


@pytest.fixture
def crafter_as_installed(monkeypatch):
    """make_crafter, but generating worlds with crafter's own per-cell code."""

    def make(seed: int):
        env = make_crafter(seed)
        monkeypatch.setattr(crafter.env, "worldgen", crafter.worldgen)
        return env

    return make


def test_worlds_identical_to_crafter_over_many_seeds(crafter_as_installed, monkeypatch):
    for seed in range(120):
        original = crafter_as_installed(seed)
        first_obs = original.reset()
        expected = world_snapshot(original)
        monkeypatch.setattr(crafter.env, "worldgen", crafter_fast)
        fast = make_crafter(seed)
        np.testing.assert_array_equal(fast.reset(), first_obs)
        assert_same(world_snapshot(fast), expected)


def test_trajectories_identical_after_generation(crafter_as_installed, monkeypatch):
    """The RNG is left where crafter leaves it, so the games play on identically (creatures move with it)."""
    for seed in (3, 11):
        original = crafter_as_installed(seed)
        original.reset()
        monkeypatch.setattr(crafter.env, "worldgen", crafter_fast)
        fast = make_crafter(seed)
        fast.reset()
        actions = np.random.default_rng(seed).integers(0, 17, 300)
        for action in actions:
            expected = original.step(int(action))
            got = fast.step(int(action))
            np.testing.assert_array_equal(got[0], expected[0])
            assert got[1:3] == expected[1:3]
            if expected[2]:
                break
        assert_same(world_snapshot(fast), world_snapshot(original))


def test_noise_fields_equal_opensimplex_pointwise():
    fields = crafter_fast.NoiseFields(seed=12345, area=(64, 64))
    grid = fields(7, 3, xs=2 * fields.xs, ys=fields.ys / 5)
    noise = fields.simplex
    for x, y in [(0, 0), (5, 63), (31, 17), (63, 63)]:
        assert grid[x, y] == noise.noise3((2 * x) / 3, (y / 5) / 3, 7)
    mixed = fields(0, {15: 1, 5: 0.3})
    x, y = 40, 9
    assert mixed[x, y] == (0 + 1 * noise.noise3(x / 15, y / 15, 0) + 0.3 * noise.noise3(x / 5, y / 5, 0)) / 1.3


def test_fast_views_draw_crafter_frames():
    """Frames through the vectorized views equal crafter's, by day, by night, asleep, and at video size
    (both games generate their worlds with crafter_fast, which make_crafter installs)."""
    import crafter

    seen_night = seen_asleep = False
    for seed in range(4):
        fast, original = make_crafter(seed), crafter.Env(seed=seed)
        assert isinstance(fast._local_view, crafter_fast.LocalView)
        np.testing.assert_array_equal(fast.reset(), original.reset())
        fast._step = original._step = 150  # night falls within the episode
        actions = np.random.default_rng(seed).integers(0, 17, 400)
        for t, action in enumerate(actions):
            got, expected = fast.step(int(action)), original.step(int(action))
            np.testing.assert_array_equal(got[0], expected[0], err_msg=f"seed {seed} step {t}")
            if t % 50 == 0:
                np.testing.assert_array_equal(fast.render((256, 256)), original.render((256, 256)))
            seen_night |= original._world.daylight < 0.5
            seen_asleep |= original._player.sleeping
            if expected[2]:
                np.testing.assert_array_equal(fast.reset(), original.reset())
    assert seen_night and seen_asleep


def test_fast_views_at_the_world_edge():
    """Near the border the view shows crafter's grey outside the world."""
    import crafter

    fast, original = make_crafter(5), crafter.Env(seed=5)
    fast.reset()
    original.reset()
    for corner in [(0, 0), (63, 1), (2, 62)]:
        for env in (fast, original):
            if env._world._obj_map[corner]:
                env._world.remove(env._world._objects[env._world._obj_map[corner]])
            env._world.move(env._player, corner)
        frame = fast.render()
        np.testing.assert_array_equal(frame, original.render())
        inside_x, inside_y = fast._local_view._window()[1]
        assert not (inside_x.all() and inside_y.all())
