"""Crafter's world generation and drawing, vectorized: the same worlds and frames, several times faster.

World generation (`generate_world`, a drop-in for `crafter.worldgen.generate_world`, ~10x faster):

Crafter builds each world cell by cell in Python: ~13 OpenSimplex lookups per cell through Python
calls, then a random draw wherever a branch asks for one. Here every noise field is computed for the
whole map at once (compiled with numba, using opensimplex's own `_noise3`), the branch conditions are
numpy masks, and only the few cells that draw random numbers are visited in crafter's order (x-major),
consuming `world.random` exactly as crafter does. The result (materials, tunnels, objects and their
order, and the RNG state afterwards) is bit-identical to crafter's for every seed; tests/test_crafter_fast.py
checks that against crafter itself.

Drawing (`LocalView`, `ItemView`, installed by `speed_up`): the map under the view is drawn with one
gather from a per-material texture atlas instead of 63 texture lookups and copies, only the objects in
view are visited (crafter loops over all of them), and the inventory panel is drawn once per distinct
inventory. Pixels are crafter's: the same textures, the same alpha blending, crafter's own lighting.
"""

from __future__ import annotations

import functools

import numpy as np
import opensimplex
from crafter import constants, engine, objects
from opensimplex.internals import _noise3

try:
    from numba import njit
except ImportError:  # crafter as installed runs without numba: same values, just slower
    njit = None


class NoiseFields:
    """crafter.worldgen._simplex(x, y, z, sizes) over the whole map, for one world's noise seed."""

    def __init__(self, seed: int, area: tuple[int, int]):
        self.simplex = opensimplex.OpenSimplex(seed=seed)
        self.xs = np.arange(area[0], dtype=np.float64)
        self.ys = np.arange(area[1], dtype=np.float64)

    def __call__(self, z: float, sizes: int | dict, normalize: bool = True, xs=None, ys=None) -> np.ndarray:
        """xs, ys: the coordinates crafter passes (2 * x or y / 5 for its tunnels); default x and y."""
        sizes = sizes if isinstance(sizes, dict) else {sizes: 1}
        xs = self.xs if xs is None else xs
        ys = self.ys if ys is None else ys
        value = 0
        for size, weight in sizes.items():
            noise = _noise_grid(xs / size, ys / size, float(z), self.simplex._perm, self.simplex._perm_grad_index3)
            value = value + weight * noise  # the same float operations in the same order as crafter
        if normalize:
            value = value / sum(sizes.values())
        return value


def _jit(function):
    return function if njit is None else njit(cache=True)(function)


@_jit
def _noise_grid(xs: np.ndarray, ys: np.ndarray, z: float, perm: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """noise3(xs[i], ys[j], z) for every map cell (i, j): (W, H) float64."""
    out = np.empty((xs.size, ys.size))
    for i in range(xs.size):
        for j in range(ys.size):
            out[i, j] = _noise3(xs[i], ys[j], z, perm, grad)
    return out


@_jit
def _first_success(options, thresholds, draws):
    """Crafter's `elif cond_1 and uniform() > p_1: ... elif cond_2 and uniform() > p_2: ...` for each cell,
    in crafter's order: options (K, cells) bool, thresholds (K,) -> (per cell: the option that won, 1..K, or
    0; number of draws used)."""
    found = np.zeros(options.shape[1], np.int8)
    used = 0
    for i in range(options.shape[1]):
        for k in range(options.shape[0]):
            if options[k, i]:
                used += 1
                if draws[used - 1] > thresholds[k]:
                    found[i] = k + 1
                    break
    return found, used


def _draw(rng: np.random.RandomState, options: list[np.ndarray], thresholds: tuple[float, ...]) -> np.ndarray:
    """`_first_success` on enough pre-drawn uniforms, then leave the RNG exactly where crafter's one-by-one
    `uniform()` calls would have left it (the same doubles: legacy uniform() is random_sample())."""
    state = rng.get_state()
    options = np.stack(options)
    found, used = _first_success(options, np.array(thresholds), rng.random_sample(options.size))
    rng.set_state(state)
    rng.random_sample(used)
    return found


def generate_world(world, player) -> None:
    """Drop-in replacement for crafter.worldgen.generate_world."""
    simplex = NoiseFields(world.random.randint(0, 2**31 - 1), world.area)
    tunnels = _set_materials(world, player, simplex)
    _set_objects(world, player, tunnels)


def _player_distance(world, player) -> np.ndarray:
    x = np.arange(world.area[0])[:, None]
    y = np.arange(world.area[1])[None, :]
    return np.sqrt((x - player.pos[0]) ** 2 + (y - player.pos[1]) ** 2)


def _set_materials(world, player, simplex: NoiseFields) -> np.ndarray:
    start = 4 - _player_distance(world, player)
    start = start + 2 * simplex(8, 3)
    start = 1 / (1 + np.exp(-start))
    water = simplex(3, {15: 1, 5: 0.15}, False) + 0.1
    water = water - 2 * start
    mountain = simplex(0, {15: 1, 5: 0.3})
    mountain = mountain - (4 * start + 0.3 * water)

    grass_start = start > 0.5
    mountains = ~grass_start & (mountain > 0.15)
    cave = mountains & (simplex(6, 7) > 0.15) & (mountain > 0.3)
    x, y = simplex.xs, simplex.ys
    horizontal = mountains & ~cave & (simplex(7, 3, xs=2 * x, ys=y / 5) > 0.4)
    vertical = mountains & ~cave & ~horizontal & (simplex(7, 3, xs=x / 5, ys=2 * y) > 0.4)
    tunnels = horizontal | vertical
    rock = mountains & ~cave & ~tunnels  # coal, iron, diamond, lava or stone
    coal_noise = simplex(1, 8) > 0
    iron_noise = simplex(2, 6) > 0.4
    diamond_height = mountain > 0.18
    lava = mountain > 0.3  # with its own noise below
    lava &= simplex(6, 5) > 0.35
    lowland = ~grass_start & ~mountains
    sand = lowland & (water > 0.25) & (water <= 0.35) & (simplex(4, 9) > -0.2)
    water_cells = lowland & ~sand & (water > 0.3)
    grassland = lowland & ~sand & ~water_cells
    tree_noise = simplex(5, 7) > 0

    ids = world._mat_ids
    materials = np.full(world.area, ids["grass"], np.uint8)
    materials[cave | tunnels] = ids["path"]
    materials[rock] = np.where(lava[rock], ids["lava"], ids["stone"])
    materials[sand] = ids["sand"]
    materials[water_cells] = ids["water"]
    trees = grassland & tree_noise
    options = [trees, rock & coal_noise, rock & iron_noise, rock & diamond_height]  # crafter's elif order
    cells = np.nonzero(np.logical_or.reduce(options))  # x-major, like crafter's loops
    found = _draw(world.random, [option[cells] for option in options], (0.8, 0.85, 0.75, 0.994))
    for code, name in enumerate(("tree", "coal", "iron", "diamond"), start=1):
        materials[cells[0][found == code], cells[1][found == code]] = ids[name]
    world._mat_map[:] = materials
    return tunnels


def _set_objects(world, player, tunnels: np.ndarray) -> None:
    distance = _player_distance(world, player)
    grass, path, sand = (world._mat_map == world._mat_ids[name] for name in ("grass", "path", "sand"))
    walkable = grass | path | sand
    cells = np.nonzero(walkable)  # x-major, like crafter's loop
    options = [(distance > 3) & grass, distance > 10, path & tunnels]  # cow, zombie, skeleton
    found = _draw(world.random, [option[cells] for option in options], (0.985, 0.993, 0.95))
    for x, y, code in zip(*(index.tolist() for index in cells), found.tolist(), strict=True):
        if code == 1:
            world.add(objects.Cow(world, (x, y)))
        elif code == 2:
            world.add(objects.Zombie(world, (x, y), player))
        elif code == 3:
            world.add(objects.Skeleton(world, (x, y), player))


class LocalView(engine.LocalView):
    """crafter.engine.LocalView, drawing the same pixels faster."""

    def __call__(self, player, unit):
        self._unit = np.array(unit)
        self._center = np.array(player.pos)
        canvas = self._draw_materials(tuple(int(u) for u in unit))
        for obj in self._objects_in_view():
            pos = obj.pos - self._center + self._offset
            engine._draw_alpha(canvas, pos * self._unit, self._textures.get(obj.texture, self._unit))
        canvas = self._light(canvas, self._world.daylight)  # crafter's lighting (it draws night noise from the RNG)
        if player.sleeping:
            canvas = self._sleep(canvas)
        return canvas

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates under the view, and which of them are inside the world."""
        first = self._center - self._offset
        xs, ys = first[0] + np.arange(self._grid[0]), first[1] + np.arange(self._grid[1])
        return (xs, ys), ((xs >= 0) & (xs < self._area[0]), (ys >= 0) & (ys < self._area[1]))

    def _draw_materials(self, unit: tuple[int, int]) -> np.ndarray:
        atlas = self._atlas(unit)  # (materials + 1, ux, uy, 3), the last entry is crafter's grey outside the world
        (xs, ys), (in_x, in_y) = self._window()
        ids = np.full(tuple(self._grid), len(atlas) - 1)
        ids[np.ix_(in_x, in_y)] = self._world._mat_map[np.ix_(xs[in_x], ys[in_y])]
        tiles = atlas[ids]  # (gx, gy, ux, uy, 3)
        return tiles.transpose(0, 2, 1, 3, 4).reshape(self._grid[0] * unit[0], self._grid[1] * unit[1], 3)

    def _atlas(self, unit: tuple[int, int]) -> np.ndarray:
        atlases = self.__dict__.setdefault("_atlases", {})
        if unit not in atlases:
            names = self._world._mat_names
            tiles = [self._textures.get(names[i], unit)[..., :3] for i in range(len(names))]
            atlases[unit] = np.stack([*tiles, np.full_like(tiles[0], 127)])
        return atlases[unit]

    def _objects_in_view(self) -> list:
        (xs, ys), (in_x, in_y) = self._window()
        indices = self._world._obj_map[np.ix_(xs[in_x], ys[in_y])]
        return [self._world._objects[i] for i in indices[indices > 0].tolist()]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_atlases"}  # rebuilt on demand


class ItemView(engine.ItemView):
    """crafter.engine.ItemView, drawn once per distinct inventory."""

    CACHE_SIZE = 256

    def __call__(self, inventory, unit):
        cache = self.__dict__.setdefault("_cache", {})
        key = (tuple(inventory.items()), tuple(np.array(unit).tolist()))
        if key not in cache:
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[key] = super().__call__(inventory, unit)
            cache[key].flags.writeable = False
        return cache[key]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}


@functools.cache
def shared_textures(directory: str) -> engine.Textures:
    """One texture set per process: envs share it (and its resized copies) instead of loading their own."""
    return engine.Textures(directory)


def speed_up(env) -> None:
    """Make a crafter.Env draw with the vectorized views and the process's shared textures (its world
    generation is patched module-wide)."""
    env._textures = shared_textures(str(constants.root / "assets"))
    env._local_view = LocalView(env._world, env._textures, env._local_view._grid)
    env._item_view = ItemView(env._textures, env._item_view._grid)
