"""Deterministic batches: the patches of iteration i depend only on (seed, i).

Every item seeds its own RNG from (seed, iteration, slot), so a resumed run sees the same
patches as an uninterrupted one without saving DataLoader or worker state, and a DDP rank
that takes slots [a, b) of the global batch sees exactly those items of the 1-process run.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import PatchDataset

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, iteration, slot) over seeds


def item_seed(seed: int, iteration: int, slot: int) -> int:
    return ((seed * _MIX + iteration) * _MIX + slot) % (2 ** 63)


class IterationBatches(Dataset):
    """Item j of this dataset is this rank's part of iteration first + j: a (lr, hr) batch."""

    def __init__(self, patches: PatchDataset, seed: int, global_batch: int, first: int, last: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"batch {global_batch} does not split evenly over {world_size} processes")
        per_rank = global_batch // world_size
        self.patches, self.seed = patches, seed
        self.slots = range(rank * per_rank, (rank + 1) * per_rank)
        self.first, self.last = first, last

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        iteration = self.first + j
        lrs, hrs = [], []
        n_images = len(self.patches.pairs)
        for slot in self.slots:
            # fork_rng keeps the caller's global RNG untouched; PatchDataset draws from it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed(self.seed, iteration, slot))
                image = int(torch.randint(n_images, ()))
                lr, hr = self.patches[image]
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs), torch.stack(hrs)


def batch_loader(patches: PatchDataset, seed: int, global_batch: int, first: int, last: int,
                 rank: int, world_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of iterations first+1 .. last in order (iteration numbers count from 1)."""
    data = IterationBatches(patches, seed, global_batch, first + 1, last + 1, rank, world_size)
    return DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory)
