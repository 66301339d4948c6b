"""Record the procgen-mirror reference rollouts (run in the python3.11 venv with procgen-mirror 0.10.7).

Usage: venv_a/bin/python record_reference.py [out.npz]
Stores, per game G: G/hashes, G/level_seed, G/rewards, G/firsts, G/first_frames, G/last_frames, plus the
actions and the parameters. Also checks that procgen's level sequence is predicted by
procgen_backends.procgen_level_sequence (mt19937 of mt19937).
"""

import json
import sys

import numpy as np
import procgen_backends as pb

out = sys.argv[1] if len(sys.argv) > 1 else "procgen_reference.npz"
p = pb.DEFAULTS
arrays = {"actions": pb.actions_for(p["steps"], p["num_envs"]).astype(np.uint8)}
for game in pb.GAMES:
    rec = pb.run_procgen_mirror(
        game, p["num_envs"], p["start_level"], p["num_levels"], p["distribution_mode"], p["rand_seed"], p["steps"]
    )
    # check the level-seed derivation against what procgen reports
    env_seeds = pb.procgen_env_rng_seeds(p["rand_seed"], p["num_envs"])
    for i in range(p["num_envs"]):
        episode_starts = [0] + [t + 1 for t in np.flatnonzero(rec["firsts"][:, i])]
        observed = [int(rec["level_seed"][t, i]) for t in episode_starts]
        predicted = pb.procgen_level_sequence(env_seeds[i], p["start_level"], p["num_levels"], len(observed))
        assert observed == predicted, (game, i, observed, predicted)
    print(
        game,
        "episodes ended per env:",
        rec["firsts"].sum(0).tolist(),
        "reward sum per env:",
        rec["rewards"].sum(0).tolist(),
        "levels env0:",
        [int(rec["level_seed"][0, 0])] + rec["level_seed"][1:, 0][rec["firsts"][:, 0]].tolist(),
    )
    for k, v in rec.items():
        arrays[f"{game}/{k}"] = v
arrays["params"] = np.array(
    json.dumps(
        {
            **p,
            "games": pb.GAMES,
            "package": "procgen-mirror==0.10.7",
            "actions": "np.random.default_rng(0).integers(0, 15, size=(steps, num_envs))",
            "hash": "blake2b digest_size=8 of the HWC uint8 frame, little-endian uint64",
        }
    )
)
np.savez_compressed(out, **arrays)
print("wrote", out)
