"""negatives=dataset: K negatives drawn from the training set each step (docs/method.md,
section 2, "Negatives from the training set"): determinism, the batch path unchanged,
exclusion of the anchors' images, config checks, the trainer feeding them, and exact resume
after SIGKILL. DDP equality is in tests/test_train_ddp.py (its csd_dataset* stages)."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from csd_fast.data import PatchDataset
from csd_fast.losses import CSDLoss
from csd_fast.train import ConfigError, load_config, train
from csd_fast.train.sampling import (NEGATIVE_SLOTS, DatasetNegatives, IterationBatches, draw_item,
                                     item_seed)

from _train_helpers import KILLED_RUN

SCALE, PATCH = 2, 4


def colour_folder(root, count: int):
    """count constant-colour 16x16 images, image i of value 10 + 20 i: any patch of it, at any
    flip, says which image it was cut from (value_image)."""
    root.mkdir()
    for i in range(count):
        Image.fromarray(np.full((16, 16, 3), 10 + 20 * i, np.uint8)).save(root / f"im{i:02d}.png")
    return root


def value_image(lr: torch.Tensor) -> int:
    assert torch.all(lr == lr.flatten()[0]), "a patch of a constant image is constant"
    return round((float(lr.flatten()[0]) - 10) / 20)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    folder = colour_folder(tmp_path_factory.mktemp("data") / "colours", 10)
    return str(folder), PatchDataset(folder, SCALE, PATCH)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return str(folder), PatchDataset(folder, SCALE, PATCH)


# --- the draw -------------------------------------------------------------------------------

def test_batches_are_the_items_they_were_before(noise):
    """The batch path, written out as it was before dataset negatives: bit for bit the same."""
    _, patches = noise
    batches = IterationBatches(patches, seed=7, global_batch=4, first=3, last=5)
    for j in range(2):
        lrs, hrs = [], []
        for slot in range(4):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed(7, 3 + j, slot))
                lr, hr = patches[int(torch.randint(len(patches.pairs), ()))]
            lrs.append(lr)
            hrs.append(hr)
        got = batches[j]
        assert len(got) == 2
        assert torch.equal(got[0], torch.stack(lrs)) and torch.equal(got[1], torch.stack(hrs))


def test_negatives_depend_only_on_seed_and_iteration(noise):
    _, patches = noise
    negatives = DatasetNegatives(patches, seed=3, count=9, global_batch=4)
    lr, images = negatives.draw(5)
    assert lr.shape == (9, 3, PATCH, PATCH) and lr.dtype == torch.float32
    assert images.shape == (9,) and images.dtype == torch.int64
    torch.manual_seed(123)  # the global RNG plays no part, and is left as it was
    state = torch.get_rng_state()
    again = DatasetNegatives(patches, seed=3, count=9, global_batch=4).draw(5)  # as after a resume
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again[0], lr) and torch.equal(again[1], images)
    assert not torch.equal(negatives.draw(6)[0], lr)
    assert not torch.equal(DatasetNegatives(patches, seed=4, count=9, global_batch=4).draw(5)[0], lr)
    # negative k is the item of seed slot NEGATIVE_SLOTS + k, apart from the batch's slots
    image, (lr_k, _) = draw_item(patches, 3, 5, NEGATIVE_SLOTS + 2)
    assert image == int(images[2]) and torch.equal(lr_k, lr[2])


def test_every_rank_and_worker_gets_the_same_negatives(noise):
    _, patches = noise
    negatives = DatasetNegatives(patches, seed=1, count=6, global_batch=4)
    one = IterationBatches(patches, 1, 4, first=1, last=3, negatives=negatives)
    ranks = [IterationBatches(patches, 1, 4, first=1, last=3, rank=r, world_size=2, negatives=negatives)
             for r in range(2)]
    loader = torch.utils.data.DataLoader(one, batch_size=None, num_workers=2)
    for j, from_worker in enumerate(loader):
        lr, hr, neg = one[j]
        assert torch.equal(neg, negatives.draw(1 + j)[0])
        assert all(torch.equal(a, b) for a, b in zip(from_worker, (lr, hr, neg)))
        parts = [r[j] for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), lr)
        assert all(torch.equal(p[2], neg) for p in parts)


@pytest.mark.parametrize("exclude", [False, True])
def test_exclude_self_keeps_every_anchor_image_out(colours, exclude):
    """40 iterations, batch 4, K = 12 > batch from 10 images: with exclusion no negative is cut
    from an image any anchor of its iteration is cut from; without, that happens."""
    _, patches = colours
    negatives = DatasetNegatives(patches, seed=0, count=12, global_batch=4, exclude_anchor_images=exclude)
    batches = IterationBatches(patches, 0, 4, first=1, last=41, negatives=negatives)
    shared, used = 0, set()
    for j in range(len(batches)):
        lr, _, neg = batches[j]
        anchors = [value_image(x) for x in lr]
        assert anchors == negatives.anchor_images(1 + j)
        drawn = [value_image(x) for x in neg]
        assert drawn == negatives.draw(1 + j)[1].tolist()
        shared += len(set(anchors) & set(drawn))
        used |= set(drawn)
    assert (shared == 0) == exclude, shared
    assert used == set(range(10))  # the negatives range over the whole training set


def test_exclusion_needs_more_images_than_the_batch(colours, tmp_path):
    folder, patches = colours
    with pytest.raises(ConfigError, match=r"exclude_self: .*need more than 10 images"):
        DatasetNegatives(patches, seed=0, count=4, global_batch=10, exclude_anchor_images=True)
    DatasetNegatives(patches, seed=0, count=4, global_batch=10)  # without exclusion: any size
    out = tmp_path / "runs" / "run"
    with pytest.raises(ConfigError, match="exclude_self: with negatives=dataset"):
        train(tiny(folder, out, batch=10, exclude_self=True))
    assert not (tmp_path / "runs").exists()


# --- config ---------------------------------------------------------------------------------

def test_neg_num_beyond_the_batch_needs_dataset_negatives():
    assert load_config(batch=16, neg_num=64, negatives="dataset").neg_num == 64
    assert load_config().negatives == "batch"  # the reference's behaviour by default
    with pytest.raises(ConfigError, match=r"^neg_num: must be <= batch \(16\) with negatives=batch.*"
                                          r"negatives=dataset draws any number"):
        load_config(None, ["neg_num=64", "batch=16"])
    with pytest.raises(ConfigError, match="^negatives: must be one of"):
        load_config(None, ["negatives=imagenet"])


# --- the loss and the trainer ---------------------------------------------------------------

TINY = dict(scale=SCALE, n_feats=8, n_resblocks=1, lr_patch=8, batch=4, width=0.5, stage="csd",
            negatives="dataset", neg_num=8, random_vgg=True, progress=False, val_data=None,
            tensorboard=False, log_every=1)


def tiny(images, out, **kw):
    return load_config(**{**TINY, "train_data": images, "out_dir": str(out), **kw})


def record_negatives(monkeypatch) -> list[torch.Tensor]:
    """The negatives_lr each CSDLoss.forward call receives."""
    seen, real = [], CSDLoss.forward

    def forward(self, *args, **kwargs):
        seen.append(kwargs.get("negatives_lr"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CSDLoss, "forward", forward)
    return seen


def test_resume_after_sigkill_is_exact_with_dataset_negatives(noise, tmp_path, monkeypatch):
    """neg_num 8 with batch 4: killed after the checkpoint of iteration 4 and resumed, the run
    ends bit for bit where an uninterrupted one does, each step fed the iteration's draw."""
    folder, _ = noise
    common = dict(iterations=6, checkpoint_every=2, exclude_self=True, deterministic=True)
    full = train(tiny(folder, tmp_path / "full", **common))
    cfg = tiny(folder, tmp_path / "killed", **common)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "cfg.yaml"),
                           str(torch.get_num_threads())], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["iteration"] == 4

    seen = record_negatives(monkeypatch)
    resumed = train(cfg, resume=True)
    assert resumed["iteration"] == 6 and full["terms"]["contrastive"] > 0
    a, b = (torch.load(r["last"], weights_only=True)["model"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    draw = DatasetNegatives(PatchDataset(folder, SCALE, 8), cfg.seed, 8, 4, exclude_anchor_images=True)
    assert len(seen) == 2
    for iteration, negatives in zip((5, 6), seen):
        assert torch.equal(negatives, draw.draw(iteration)[0])
