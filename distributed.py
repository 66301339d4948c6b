"""One run on several processes (`torchrun`): the process group and the few collectives training needs.

Each rank steps its own envs, fills its own buffer and computes GAE locally; the ranks train one model by
averaging gradients with one flat all-reduce per minibatch, so parameters stay identical on every rank. With
one process (plain `python train.py`) every method is a no-op and nothing is communicated.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from errors import UsageError


def backend(device: torch.device) -> str:
    """The process group's backends: gloo for CPU tensors always (stop and save flags, reward statistics, object
    gathers), NCCL for CUDA tensors (gradients, value statistics) when training on GPUs."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


class Ranks:
    """This process's place in the job: rank, world size, local rank; and the collectives of the loop."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device, timeout_minutes: float) -> None:
        """Join the process group (see `backend`). A rank that waits longer than the timeout for the others fails
        instead of hanging."""
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend(device), timeout=timedelta(minutes=timeout_minutes))

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank."""
        if self.active and device.type == "cuda":
            if torch.cuda.device_count() <= self.local_rank:
                raise UsageError(f"rank {self.rank}: no GPU for local rank {self.local_rank}")
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    # ---------------------------------------------------------------------------------- collectives

    def average_gradients(self, params: list[torch.nn.Parameter], bad_loss: torch.Tensor) -> torch.Tensor:
        """Gradients -> their mean over ranks, as one flat all-reduce that also carries each rank's `bad_loss`
        flag (a bool tensor: this rank's loss is not finite); -> whether any rank's loss was not finite, so that
        every rank skips the same minibatches."""
        if not self.active:
            return bad_loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [bad_loss.float().reshape(1)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()
        return flat[-1] > 0

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (stop requests, save requests)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def beat(self, done: bool, stop: bool) -> tuple[bool, bool]:
        """One heartbeat while rank 0 works alone (evaluation) and the others wait: -> whether any rank is done,
        whether any rank was asked to stop. Each beat is short, so no wait comes near the group's timeout."""
        if not self.active:
            return done, stop
        t = torch.tensor([float(done), float(stop)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0]), bool(t[1])

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of a small float64 array."""
        if not self.active:
            return values
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        dist.all_reduce(t)
        return t.numpy()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a tensor on this rank's device."""
        if not self.active:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj) -> list | None:
        """Every rank's `obj` (picklable), in rank order, on rank 0 only (None elsewhere): checkpoints are large."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def check_same(self, values: dict, what: str, hint: str) -> None:
        """Stop every rank with one error naming the keys where any rank's `values` differ from rank 0's."""
        if not self.active:
            return
        main, *others = self.gather(values)
        differ = sorted({k for other in others for k in main.keys() | other.keys() if other.get(k) != main.get(k)})
        if differ:
            ranks = ", ".join(str(r) for r, other in enumerate(others, start=1) if other != main)
            raise UsageError(f"rank(s) {ranks} resolved other {what} than rank 0 ({', '.join(differ)}); {hint}")

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (one starting point for all)."""
        if not self.active:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise when the ranks' parameters differ (they must stay identical after every update)."""
        if not self.active:
            return
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in module.parameters()]).sum().cpu()
        sums = self.gather(float(checksum))
        if len(set(sums)) != 1:
            raise RuntimeError(f"parameters differ between ranks (checksums {sums})")
