"""Compare a backend's rollout with the procgen-mirror reference.

Usage:
  venv_c/bin/python compare.py procgen_gym
  venv_b/bin/python compare.py envpool [naive|procgen] [skip]   # seed mapping; skip = take envpool's reset steps aside
"""

import json
import sys

import numpy as np
import procgen_backends as pb

backend = sys.argv[1]
kwargs = {}
if backend == "envpool":
    kwargs["seed_mapping"] = sys.argv[2] if len(sys.argv) > 2 else "procgen"
    kwargs["skip_reset_steps"] = len(sys.argv) > 3 and sys.argv[3] == "skip"
ref = np.load(sys.argv[4] if len(sys.argv) > 4 else "procgen_reference.npz")
p = json.loads(str(ref["params"]))
summary = {}
for game in p["games"]:
    rec = pb.BACKENDS[backend](
        game,
        p["num_envs"],
        p["start_level"],
        p["num_levels"],
        p["distribution_mode"],
        p["rand_seed"],
        p["steps"],
        **kwargs,
    )
    R = {k: ref[f"{game}/{k}"] for k in rec}
    same = {k: bool(np.array_equal(rec[k], R[k])) for k in rec}
    print(f"== {game} {backend} {kwargs}: identical: {same}")
    for i in range(p["num_envs"]):
        h_bad = np.flatnonzero(rec["hashes"][:, i] != R["hashes"][:, i])
        r_bad = np.flatnonzero(rec["rewards"][:, i] != R["rewards"][:, i])
        f_bad = np.flatnonzero(rec["firsts"][:, i] != R["firsts"][:, i])

        def levels(r, i=i):
            return [int(r["level_seed"][0, i])] + r["level_seed"][1:, i][r["firsts"][:, i]].tolist()

        print(
            f"  env {i}: first frame mismatch at obs {h_bad[0] if len(h_bad) else None} "
            f"({len(h_bad)}/{len(R['hashes'])} differ); first reward mismatch step "
            f"{r_bad[0] if len(r_bad) else None}; first done mismatch step {f_bad[0] if len(f_bad) else None}"
        )
        print(
            f"         episode-end steps ref {np.flatnonzero(R['firsts'][:, i]).tolist()} "
            f"got {np.flatnonzero(rec['firsts'][:, i]).tolist()}"
        )
        print(f"         levels ref {levels(R)}  got {levels(rec)}")
        if i == 0 and not np.array_equal(rec["first_frames"][0], R["first_frames"][0]):
            d = np.abs(rec["first_frames"][0].astype(int) - R["first_frames"][0].astype(int))
            print(f"         first frame env0: {np.count_nonzero(d.max(-1))} pixels differ, max abs diff {d.max()}")
    summary[game] = same
print(json.dumps(summary))
