"""torchrun support: the same command runs single-process or as one rank of many."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when flag is True on some rank (so all ranks stop together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's t concatenated along dim 0 in rank order (the global batch); no autograd."""
        if not self.enabled:
            return t
        t = t.contiguous()  # gloo and nccl gather dense tensors only
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return torch.cat(parts)

    def global_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of t over ranks, differentiable, for a loss term that every rank computes
        from the same global statistics (CSD's ratio of batch means).

        With m = mean_r t_r and the same loss f(m) on every rank, the all-reduce's backward
        sums the ranks' equal upstream gradients f'(m) / W, so each rank's t_r gets f'(m):
        W times its exact share f'(m) / W. DDP's averaging of parameter gradients divides
        by W again, so the final gradient is exactly that of f on the global batch.
        """
        if not self.enabled:
            return t
        return _AllReduceSum.apply(t) / self.world_size

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """The sum of t over ranks, whose backward sums the ranks' gradients the same way.

    Built on dist.all_reduce: torch.distributed.nn.functional.all_reduce is deprecated, and
    the replacement its warning names lives in a private module."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def setup(device_name: str) -> Dist:
    """Join the process group when torchrun's RANK/WORLD_SIZE are set (or one exists already)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", rank)))
        return Dist(rank, world, device, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, resolve_device(device_name, 0), owns_group=False)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, device, owns_group=True)
