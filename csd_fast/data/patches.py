"""Random aligned LR/HR training patches with flip/transpose augmentation."""
from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch.utils.data import Dataset

from .datasets import DatasetError, ImagePair, check_pair, find_pairs, load_pair


class PatchDataset(Dataset):
    """Item i: a random lr_patch^2 LR patch of image i % n_images and its HR patch,
    as float32 (3, h, w) tensors in [0, 255].

    pairs_or_folder is a dataset folder (any layout find_pairs knows), an SRFolder, or
    ImagePairs. With cache, every image is decoded here, once, in the constructing
    process: DataLoader workers inherit the decoded tensors instead of decoding again.
    Randomness comes from torch's default generator, which DataLoader seeds differently
    in each worker, so torch.manual_seed (or the DataLoader's generator) reproduces a run.
    length is the epoch length (iterations * batch size); the default is one item per image.
    """

    def __init__(self, pairs_or_folder: str | os.PathLike | Iterable[ImagePair], scale: int,
                 lr_patch: int = 48, augment: bool = True, length: int | None = None,
                 cache: bool = True):
        if isinstance(pairs_or_folder, (str, os.PathLike)):
            pairs = find_pairs(pairs_or_folder, scale)
        else:
            pairs = list(getattr(pairs_or_folder, "pairs", pairs_or_folder))
        if not pairs:
            raise DatasetError("PatchDataset needs at least one image")
        if lr_patch < 1:
            raise ValueError(f"lr_patch must be positive, got {lr_patch}")
        if length is not None and length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.pairs, self.scale, self.lr_patch, self.augment = pairs, scale, lr_patch, augment
        self.length = len(pairs) if length is None else length
        self._cache = [load_pair(p, scale) for p in pairs] if cache else None
        for k, pair in enumerate(pairs):
            h, w = self._cache[k][0].shape[1:] if self._cache else check_pair(pair, scale)
            if min(h, w) < lr_patch:
                raise DatasetError(f"image {pair.name} ({pair.lr_path or pair.hr_path}) is {w}x{h} at "
                                   f"LR size, smaller than the {lr_patch}x{lr_patch} LR patch")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        k = index % len(self.pairs)
        lr, hr = self._cache[k] if self._cache is not None else load_pair(self.pairs[k], self.scale)
        p, s = self.lr_patch, self.scale
        y = int(torch.randint(lr.shape[1] - p + 1, ()))
        x = int(torch.randint(lr.shape[2] - p + 1, ()))
        lr = lr[:, y:y + p, x:x + p]
        hr = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
        if self.augment:
            hflip, vflip, transpose = (torch.rand(3) < 0.5).tolist()
            lr, hr = (augment(t, hflip, vflip, transpose) for t in (lr, hr))
        return (lr.to(torch.float32, memory_format=torch.contiguous_format),
                hr.to(torch.float32, memory_format=torch.contiguous_format))


def augment(img: torch.Tensor, hflip: bool, vflip: bool, transpose: bool) -> torch.Tensor:
    """One of the 8 flips/transposes of a (..., H, W) image."""
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if transpose:
        img = img.transpose(-1, -2)
    return img
