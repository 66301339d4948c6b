"""Atomic checkpoint writes and clear errors for bad checkpoint files."""

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint

PAYLOAD = {"config": {"env": "crafter"}, "policy_spec": {}, "model": {"w": torch.ones(2)}, "global_step": 5}


def test_roundtrip_and_logdir_resolution(tmp_path):
    save_checkpoint(tmp_path / "last.pth", PAYLOAD)
    loaded = load_checkpoint(tmp_path)  # a logdir resolves to best_model.pth, else last.pth
    assert loaded["global_step"] == 5 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp files left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "best_model.pth"
    save_checkpoint(path, PAYLOAD)

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert load_checkpoint(path)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]


@pytest.mark.parametrize("case", ["garbage", "truncated", "foreign", "future", "pickle-code", "missing", "empty-dir"])
def test_bad_checkpoints_raise_one_clear_error(tmp_path, case):
    path = tmp_path / "x.pth"
    if case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        save_checkpoint(path, PAYLOAD)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "foreign":
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    elif case == "future":
        save_checkpoint(path, PAYLOAD)
        data = torch.load(path, weights_only=True)
        torch.save(data | {"version": 999}, path)
    elif case == "pickle-code":
        torch.save({"format": "pixelppo-checkpoint", "obj": object()}, path)
    elif case == "empty-dir":
        path = tmp_path
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_rng_state_keeps_the_stream_of_the_gpu_in_use_only(monkeypatch):
    """Saving every visible GPU's stream made a resume with fewer GPUs visible fail."""
    saved_from, restored = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved_from.append(device) or torch.ones(1))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    generator = torch.Generator()
    state = checkpoint.rng_state(generator, torch.device("cuda", 1))
    assert saved_from == [torch.device("cuda", 1)]
    checkpoint.set_rng_state(state, generator, torch.device("cuda", 0))  # resumed where one GPU is visible
    assert restored == [(1, torch.device("cuda", 0))]
    older = state | {"cuda": [torch.full((1,), 5), torch.full((1,), 6)]}  # every visible GPU's, as before
    restored.clear()
    checkpoint.set_rng_state(older, generator, torch.device("cuda", 1))
    assert restored == [(6, torch.device("cuda", 1))]
    restored.clear()
    checkpoint.set_rng_state(older | {"cuda": older["cuda"][:1]}, generator, torch.device("cuda", 1))
    assert restored == []  # that GPU's stream was never saved: left as it is
    assert checkpoint.rng_state(generator, torch.device("cpu"))["cuda"] is None
