"""Checkpoint files: atomic writes, safe loads (no code execution), clear errors for bad files."""

from __future__ import annotations

import math
import os
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from errors import UsageError

FORMAT = "pixelppo-checkpoint"
VERSION = 2  # 2: policies with feature normalization, a shared trunk and value normalization
REQUIRED_KEYS = ("config", "policy_spec", "model", "global_step")


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupted, foreign or from a newer pixelppo."""


@dataclass
class RunState:
    """A run's counters and clocks: what the training loop keeps between updates, saved in every checkpoint and
    restored by --resume as a whole."""

    global_step: int = 0  # agent steps of all ranks so far
    update: int = 0  # PPO updates done
    next_eval: int = 0  # evaluate once global_step reaches this
    evaluations: int = 0
    bad_updates: int = 0  # consecutive updates whose every minibatch was non-finite
    best_score: float = -math.inf  # the family's published metric (selection score) of the best evaluation
    last_score: float | None = None  # of the last evaluation
    last_eval_step: int = -1  # global_step of the last finished evaluation (the final one is due until it matches)
    timing: dict[str, float] = field(  # seconds of each phase: training is the first three
        default_factory=lambda: {"env": 0.0, "inference": 0.0, "update": 0.0, "evaluation": 0.0}
    )
    elapsed_before: float = 0.0  # seconds the run spent in earlier processes (resumed runs)
    # each process's stretch of the run: {from_step, to_step, seconds, device, precision}, the last one this process's
    stretches: list[dict] = field(default_factory=list)

    def to_payload(self, elapsed: float) -> dict:
        """The checkpoint's entries (their names and places are the checkpoint format's); `elapsed`: seconds so
        far, this process included. The "resume" entry is merged with the loop's other resume data."""
        return {
            "global_step": self.global_step,
            "best_eval_score": self.best_score,
            "eval_score": self.last_score,
            "resume": {
                "update": self.update,
                "next_eval": self.next_eval,
                "bad_updates": self.bad_updates,
                "evaluations": self.evaluations,
                "last_eval_step": self.last_eval_step,
                "timing": self.timing,
                "elapsed": elapsed,
                "stretches": self.stretches,
            },
        }

    @classmethod
    def from_payload(cls, payload: dict) -> RunState:
        resume = payload["resume"]
        return cls(
            global_step=payload["global_step"],
            update=resume["update"],
            next_eval=resume["next_eval"],
            evaluations=resume["evaluations"],
            last_eval_step=resume.get("last_eval_step", payload["global_step"]),  # older files: none was due
            bad_updates=resume["bad_updates"],
            best_score=payload["best_eval_score"],
            last_score=payload["eval_score"],
            timing={"evaluation": 0.0} | dict(resume["timing"]),  # older files did not time evaluations
            elapsed_before=resume["elapsed"],
            stretches=list(resume.get("stretches", [])),  # older files: not recorded
        )


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(file)` on a temp file in the same folder, fsync it, then rename it over `path`:
    readers see either the old file or the new one, never a partial write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write `payload` (tensors, numbers, strings, lists and dicts only) atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **payload}, f))


def resolve_checkpoint_path(path: str | os.PathLike, prefer: str = "best_model.pth") -> Path:
    """A checkpoint file, or a logdir (its `prefer` file, else the other of best_model.pth / last.pth)."""
    path = Path(path)
    if path.is_dir():
        for name in dict.fromkeys((prefer, "best_model.pth", "last.pth")):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no best_model.pth or last.pth in {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a pixelppo checkpoint with `weights_only=True` (nothing in it is executed)."""
    path = resolve_checkpoint_path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is corrupted or not a pixelppo checkpoint (not a torch archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in reason:
            reason = "it holds objects outside the safe allow-list"
        raise CheckpointError(f"{path} is corrupted or not a pixelppo checkpoint ({reason[:200]})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pixelppo checkpoint")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise CheckpointError(f"{path} was written by a newer pixelppo (format version {payload.get('version')})")
    if payload["version"] < VERSION:
        raise CheckpointError(
            f"{path} was written by an older pixelppo (format version {payload['version']}, this one reads "
            f"{VERSION}): its network differs; evaluate it with the pixelppo that trained it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    return payload


# ------------------------------------------------------------------------- state inside checkpoints


def rng_state(minibatch_generator: torch.Generator, device: torch.device) -> dict:
    """Every random number stream of a training process, for an exact resume; on CUDA only the stream of the
    GPU in use (a resume may see fewer GPUs than the run that saved)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "minibatches": minibatch_generator.get_state(),
    }


def set_rng_state(state: dict, minibatch_generator: torch.Generator, device: torch.device) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, list):  # checkpoints of older versions: the stream of every visible GPU
        index = device.index or 0
        cuda = cuda[index] if device.type == "cuda" and index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    minibatch_generator.set_state(state["minibatches"])


def to_tensors(tree):
    """numpy arrays -> tensors, so env state fits a weights_only checkpoint."""
    if isinstance(tree, dict):
        return {k: to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_tensors(v) for v in tree]
    return torch.from_numpy(tree.copy()) if isinstance(tree, np.ndarray) else tree


def to_arrays(tree):
    """The inverse of `to_tensors`."""
    if isinstance(tree, dict):
        return {k: to_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_arrays(v) for v in tree]
    return tree.numpy() if isinstance(tree, torch.Tensor) else tree
