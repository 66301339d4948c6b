"""Vectorized pixel games with frame stacking: Crafter, Procgen and Atari behind one shape (vecenv.py).

`parse_env_id` reads an `--env` value into a game family and game; `make_vec_env` builds that family's vector env:
`CrafterVecEnv` (env_crafter.py), `ProcgenVecEnv` (env_procgen.py) or `AtariVecEnv` (env_atari.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from env_atari import AtariVecEnv, atari_rom_id
from env_crafter import CrafterVecEnv
from env_procgen import PROCGEN_GAMES, PROCGEN_MODES, ProcgenVecEnv
from errors import UsageError
from vecenv import VecEnv

FAMILIES = ("crafter", "procgen", "atari")
EVAL_SEED_OFFSET = 1_000_003  # eval envs never share seeds with training envs


@dataclass(frozen=True)
class EnvSpec:
    """A parsed `--env` value: game family and game name."""

    family: str
    game: str

    @property
    def name(self) -> str:
        return self.family if self.family == "crafter" else f"{self.family}/{self.game}"


def parse_env_id(env_id: str) -> EnvSpec:
    """`crafter`, `procgen/<game>`, `atari/<Game>` or a gymnasium id like `ALE/Breakout-v5`."""
    text = env_id.strip()
    if text.lower() == "crafter":
        return EnvSpec("crafter", "crafter")
    ale = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v\d+", text)
    family, _, game = ("atari", "", ale.group(1)) if ale else text.partition("/")
    family = family.lower()
    if family == "procgen" and game.lower() in PROCGEN_GAMES:
        return EnvSpec("procgen", game.lower())
    if family == "atari" and game:
        return EnvSpec("atari", atari_rom_id(game))
    if family == "procgen":
        raise UsageError(f"unknown Procgen game {game!r}; choose one of: {', '.join(PROCGEN_GAMES)}")
    raise UsageError(f"unknown env {env_id!r}; use crafter, procgen/<game> or atari/<Game> (e.g. atari/Breakout)")


def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    history_length: int,
    evaluation: bool = False,
    max_crashes: int = 3,
    num_workers: int | None = None,
    distribution_mode: str = "easy",
    start_level: int = 0,
    num_levels: int = 200,
    episodic_life: bool = True,
    repeat_action_probability: float = 0.0,
) -> VecEnv:
    """Build the vector env for `env_id`; `evaluation` gives separate seeds and full Atari games (the
    Procgen levels are the caller's choice: evaluation.make_eval_env picks unseen ones)."""
    spec = parse_env_id(env_id)
    if num_envs < 1 or history_length < 1:
        raise UsageError("num_envs and history_length must be at least 1")
    if evaluation:
        seed += EVAL_SEED_OFFSET
    if spec.family == "crafter":
        return CrafterVecEnv(num_envs, seed, history_length, num_workers, max_crashes=max_crashes)
    if spec.family == "procgen":
        if distribution_mode not in PROCGEN_MODES:
            raise UsageError(f"unknown Procgen distribution mode {distribution_mode!r}")
        if start_level < 0 or num_levels < 0:
            raise UsageError("Procgen start_level and num_levels must be >= 0")
        return ProcgenVecEnv(spec.game, num_envs, seed, history_length, distribution_mode, start_level, num_levels)
    return AtariVecEnv(
        spec.game, num_envs, seed, history_length, episodic_life and not evaluation, repeat_action_probability
    )
