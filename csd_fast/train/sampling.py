"""Deterministic batches: the patches of iteration i depend only on (seed, i).

Every item seeds its own RNG from (seed, iteration, slot), so a resumed run sees the same
patches as an uninterrupted one without saving DataLoader or worker state, and a DDP rank
that takes slots [a, b) of the global batch sees exactly those items of the 1-process run.
The global batch takes slots [0, batch); the negatives drawn from the training set
(negatives=dataset, DatasetNegatives) take slots NEGATIVE_SLOTS + k, so they never share
a seed with a batch item, and every rank draws all K of them itself, as one process would.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import PatchDataset
from .config import ConfigError, TrainConfig

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, iteration, slot) over seeds


# Seed slots of the dataset negatives: NEGATIVE_SLOTS + k for negative k. The batch's slots
# are [0, batch) and the trainer's permutation of batch negatives uses slot 1 << 40.
NEGATIVE_SLOTS = 1 << 41


def item_seed(seed: int, iteration: int, slot: int) -> int:
    return ((seed * _MIX + iteration) * _MIX + slot) % (2 ** 63)


def draw_item(patches: PatchDataset, seed: int, iteration: int, slot: int,
              choices: Sequence[int] | None = None, crop: bool = True
              ) -> tuple[int, tuple[torch.Tensor, torch.Tensor] | None]:
    """The item of (seed, iteration, slot): which training image it is cut from (uniformly
    one of `choices`; None: of every image) and, with crop, its random (lr, hr) patches.
    The image is the first draw from the item's seed, so crop=False finds it cheaply."""
    # fork_rng keeps the caller's global RNG untouched; PatchDataset draws from it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(item_seed(seed, iteration, slot))
        pick = int(torch.randint(len(patches.pairs) if choices is None else len(choices), ()))
        image = pick if choices is None else choices[pick]
        return image, (patches[image] if crop else None)


class DatasetNegatives:
    """negatives=dataset: the `count` negatives of iteration i, LR patches cut from the whole
    training set, each from its own seed (seed, i, NEGATIVE_SLOTS + k) like a batch item.

    They depend only on (seed, i), so a resumed run and every DDP rank draw the same ones
    with no state saved and no collective. With exclude_anchor_images (exclude_self) they
    are drawn only from the images that no item of iteration i's global batch is cut from:
    no anchor then has a patch of its own image among its negatives, which the shared
    negatives cannot otherwise express when several anchors share an image. That needs
    more training images than the batch holds (ConfigError otherwise).
    """

    def __init__(self, patches: PatchDataset, seed: int, count: int, global_batch: int,
                 exclude_anchor_images: bool = False):
        n_images = len(patches.pairs)
        if count < 1:
            raise ConfigError(f"neg_num: must be >= 1, got {count}")
        if exclude_anchor_images and n_images <= global_batch:
            raise ConfigError(
                f"exclude_self: with negatives=dataset the negatives are drawn from the training "
                f"images that no patch of the batch comes from, and a batch of {global_batch} can "
                f"cover all {n_images} training images: need more than {global_batch} images "
                f"(or exclude_self=false, or negatives=batch)")
        self.patches, self.seed, self.count = patches, seed, count
        self.global_batch, self.exclude_anchor_images = global_batch, exclude_anchor_images

    def anchor_images(self, iteration: int) -> list[int]:
        """The training image of each item of iteration's global batch, in slot order."""
        return [draw_item(self.patches, self.seed, iteration, slot, crop=False)[0]
                for slot in range(self.global_batch)]

    def choices(self, iteration: int) -> list[int] | None:
        """The images the negatives may come from; None: every image."""
        if not self.exclude_anchor_images:
            return None
        anchors = set(self.anchor_images(iteration))
        return [i for i in range(len(self.patches.pairs)) if i not in anchors]

    def draw(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, 3, p, p) LR patches and the (count,) int64 training image of each."""
        choices = self.choices(iteration)
        images, lrs = [], []
        for k in range(self.count):
            image, (lr, _) = draw_item(self.patches, self.seed, iteration, NEGATIVE_SLOTS + k, choices)
            images.append(image)
            lrs.append(lr)
        return torch.stack(lrs), torch.tensor(images, dtype=torch.int64)


def dataset_negatives(cfg: TrainConfig, patches: PatchDataset) -> DatasetNegatives | None:
    """The run's DatasetNegatives with negatives=dataset in a csd stage that has a contrastive
    term; None where the negatives (if any) come from the batch."""
    if cfg.negatives != "dataset" or cfg.stage != "csd" or not cfg.lambda_c:
        return None
    return DatasetNegatives(patches, cfg.seed, cfg.neg_num, cfg.batch, cfg.exclude_self)


class IterationBatches(Dataset):
    """Item j of this dataset is this rank's part of iteration first + j: a (lr, hr) batch,
    and with negatives (negatives=dataset) a third tensor, the iteration's K negatives' LR
    patches (the same on every rank)."""

    def __init__(self, patches: PatchDataset, seed: int, global_batch: int, first: int, last: int,
                 rank: int = 0, world_size: int = 1, negatives: DatasetNegatives | None = None):
        if global_batch % world_size:
            raise ValueError(f"batch {global_batch} does not split evenly over {world_size} processes")
        per_rank = global_batch // world_size
        self.patches, self.seed, self.negatives = patches, seed, negatives
        self.slots = range(rank * per_rank, (rank + 1) * per_rank)
        self.first, self.last = first, last

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, ...]:
        iteration = self.first + j
        lrs, hrs = [], []
        for slot in self.slots:
            _, (lr, hr) = draw_item(self.patches, self.seed, iteration, slot)
            lrs.append(lr)
            hrs.append(hr)
        if self.negatives is None:
            return torch.stack(lrs), torch.stack(hrs)
        return torch.stack(lrs), torch.stack(hrs), self.negatives.draw(iteration)[0]


def batch_loader(patches: PatchDataset, seed: int, global_batch: int, first: int, last: int,
                 rank: int, world_size: int, num_workers: int, pin_memory: bool = False,
                 negatives: DatasetNegatives | None = None) -> DataLoader:
    """Batches of iterations first+1 .. last in order (iteration numbers count from 1):
    (lr, hr), or (lr, hr, negatives' lr) with negatives."""
    data = IterationBatches(patches, seed, global_batch, first + 1, last + 1, rank, world_size,
                            negatives)
    return DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory)
