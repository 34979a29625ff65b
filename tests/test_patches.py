"""The training patch sampler: alignment, augmentation, seeding, DataLoader workers."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import csd_fast.data.datasets as datasets
from csd_fast.data import DatasetError, PatchDataset, SRFolder, augment, find_pairs, read_image

SCALE = 3


def nearest_up(img: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    return img.repeat_interleave(scale, -1).repeat_interleave(scale, -2)


def make_nearest_set(root: Path, sizes=((20, 17), (15, 26), (18, 18))) -> list[torch.Tensor]:
    """EDSR-layout set whose HR is LR upsampled by pixel repetition: every aligned HR
    patch is exactly the nearest upsampling of its LR patch, so alignment is checkable."""
    lrs = []
    for i, (h, w) in enumerate(sizes):
        lr = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        hr = nearest_up(torch.from_numpy(lr).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        for path, pixels in ((root / "HR" / f"im{i}.png", hr),
                             (root / "LR_bicubic" / f"X{SCALE}" / f"im{i}x{SCALE}.png", lr)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
        lrs.append(torch.from_numpy(lr).permute(2, 0, 1))
    return lrs


@pytest.fixture
def folder(tmp_path):
    make_nearest_set(tmp_path / "set")
    return tmp_path / "set"


def dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    return [augment(img, h, v, t) for h in (False, True) for v in (False, True) for t in (False, True)]


def test_patches_are_aligned_and_shaped(folder):
    data = PatchDataset(folder, SCALE, lr_patch=7, length=60)
    assert len(data) == 60
    for i in range(len(data)):
        lr, hr = data[i]
        assert lr.dtype == hr.dtype == torch.float32
        assert lr.shape == (3, 7, 7) and hr.shape == (3, 21, 21)
        assert lr.is_contiguous() and hr.is_contiguous()
        assert torch.equal(hr, nearest_up(lr))  # holds only if crop and flips match


def test_patch_location_without_augmentation(folder):
    lrs = make_nearest_set(folder)
    data = PatchDataset(folder, SCALE, lr_patch=5, augment=False, length=30)
    corners = set()
    for i in range(len(data)):
        lr, _ = data[i]
        source = lrs[i % 3].float()
        hits = [(y, x) for y in range(source.shape[1] - 4) for x in range(source.shape[2] - 4)
                if torch.equal(source[:, y:y + 5, x:x + 5], lr)]
        assert len(hits) == 1, "a patch must be an untransformed crop of its own image"
        corners.add(hits[0])
    assert len(corners) > 20  # the crop position is random


def test_every_augmentation_occurs_and_hits_lr_and_hr_alike(tmp_path):
    lr_img = make_nearest_set(tmp_path, sizes=((6, 6),))[0].float()
    data = PatchDataset(tmp_path, SCALE, lr_patch=6, length=400)  # the patch is the whole image
    seen = set()
    for i in range(len(data)):
        lr, hr = data[i]
        which = [k for k, t in enumerate(dihedral(lr_img)) if torch.equal(t, lr)]
        assert len(which) == 1
        assert torch.equal(hr, dihedral(nearest_up(lr_img))[which[0]])
        seen.add(which[0])
    assert seen == set(range(8))
    plain = PatchDataset(tmp_path, SCALE, lr_patch=6, augment=False)
    assert torch.equal(plain[0][0], lr_img)


def test_reproducible_with_a_seed(folder):
    data = PatchDataset(folder, SCALE, lr_patch=6, length=12)

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([data[i][0] for i in range(len(data))])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_inputs_folder_pairs_or_srfolder(folder):
    for source in (folder, str(folder), find_pairs(folder, SCALE), SRFolder(folder, SCALE)):
        data = PatchDataset(source, SCALE, lr_patch=4)
        assert len(data) == 3 and data.pairs[0].name == "im0"


def test_length_and_index_range(folder):
    data = PatchDataset(folder, SCALE, lr_patch=4, length=10)
    assert len(data) == 10 and data[9][0].shape == (3, 4, 4)
    with pytest.raises(IndexError):
        data[10]
    assert len(PatchDataset(folder, SCALE, lr_patch=4)) == 3


def test_uncached_reads_each_time(folder, monkeypatch):
    reads = []
    monkeypatch.setattr(datasets, "read_image", lambda p: reads.append(p) or read_image(p))
    data = PatchDataset(folder, SCALE, lr_patch=4, cache=False)
    assert reads == []
    lr, hr = data[0]
    assert len(reads) == 2 and torch.equal(hr, nearest_up(lr))


def test_dataloader_workers_reuse_the_cache(folder, tmp_path, monkeypatch):
    log = tmp_path / "reads.log"

    def logged_read(path):
        with open(log, "a") as f:  # a file, because worker processes cannot append to a list here
            f.write(f"{os.getpid()} {Path(path).name}\n")
        return read_image(path)

    monkeypatch.setattr(datasets, "read_image", logged_read)
    data = PatchDataset(folder, SCALE, lr_patch=5, length=32)
    loader = DataLoader(data, batch_size=4, num_workers=2, multiprocessing_context="fork",
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == 8 and batches[0][0].shape == (4, 3, 5, 5) and batches[0][1].shape == (4, 3, 15, 15)
    for lr, hr in batches:
        assert torch.equal(hr, nearest_up(lr))
    lines = log.read_text().splitlines()
    assert len(lines) == 6 and {line.split()[0] for line in lines} == {str(os.getpid())}
    # The loader's generator seeds the workers, so a run repeats.
    again = list(DataLoader(data, batch_size=4, num_workers=2, multiprocessing_context="fork",
                            generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_workers_draw_different_patches(tmp_path):
    make_nearest_set(tmp_path, sizes=((30, 30),))
    data = PatchDataset(tmp_path, SCALE, lr_patch=8, length=2)
    loader = DataLoader(data, batch_size=1, num_workers=2, multiprocessing_context="fork")
    first, second = (lr for lr, _ in loader)
    assert not torch.equal(first, second)  # same image, two workers: different draws


def test_image_smaller_than_the_patch(folder):
    for cache in (True, False):
        with pytest.raises(DatasetError, match=r"image im1 \(.*im1x3\.png\) is 26x15 at LR size, "
                                               r"smaller than the 16x16 LR patch"):
            PatchDataset(folder, SCALE, lr_patch=16, cache=cache)


def test_bad_arguments(folder):
    with pytest.raises(DatasetError, match="at least one image"):
        PatchDataset([], SCALE)
    with pytest.raises(ValueError, match="lr_patch"):
        PatchDataset(folder, SCALE, lr_patch=0)
    with pytest.raises(ValueError, match="length"):
        PatchDataset(folder, SCALE, length=0)
