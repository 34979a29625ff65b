"""DDP on CPU (gloo): 2 processes on the global batch end with the weights of 1 process,
for every stage, including CSD's contrastive term (a ratio of global batch means, with
negatives drawn from the global batch)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from csd_fast.train import load_config, train
from csd_fast.train.trainer import build_model

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TINY = dict(scale=2, n_feats=8, n_resblocks=1, lr_patch=8, batch=4, width=0.5, progress=False,
            iterations=3, checkpoint_every=3, val_every=100, device="cpu")
# neg_num 3 > the 2 items a rank holds: the negatives must come from the global batch
CONTRASTIVE = dict(stage="csd", lambda_c=200.0, lambda_t=1.0, neg_num=3, random_vgg=True)
STAGES = {"teacher": dict(stage="teacher"),
          "csd_l1": dict(stage="csd", lambda_c=0.0, lambda_t=1.0),
          "csd": CONTRASTIVE,
          "csd_exclude_self": dict(CONTRASTIVE, exclude_self=True, loss_backend="reference")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, ports: list[int], images: str, root: str) -> None:
    # torchrun's environment: train() creates (and destroys) the process group itself
    torch.set_num_threads(1)
    for (name, extra), port in zip(STAGES.items(), ports):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        train(load_config(**TINY, **extra, train_data=images, val_data=images,
                          out_dir=os.path.join(root, f"ddp_{name}")))


def noise_folder(folder, count, seed):
    """A plain HR folder of random 32x32 images."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_two_processes_match_one(tmp_path):
    folder = noise_folder(tmp_path / "hr", count=4, seed=1)
    mp.spawn(worker, args=(2, [free_port() for _ in STAGES], str(folder), str(tmp_path)), nprocs=2)
    singles = {}
    for name, extra in STAGES.items():
        single = train(load_config(**TINY, **extra, train_data=str(folder), val_data=None,
                                   out_dir=str(tmp_path / f"one_{name}")))
        a = torch.load(single["last"], weights_only=True)["model"]
        b = torch.load(tmp_path / f"ddp_{name}" / "last.pt", weights_only=True)["model"]
        assert torch.load(tmp_path / f"ddp_{name}" / "best.pt", weights_only=True)["iteration"] == 3
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        # training moved the weights away from the seed's init: the comparison is not vacuous
        torch.manual_seed(0)
        init = build_model(load_config(**TINY, **extra)).state_dict()
        assert not torch.allclose(init["head.weight"], a["head.weight"], atol=1e-6)
        singles[name] = a
    # the contrastive term moved the weights well beyond the tolerance above: a DDP run that
    # got it wrong (per-rank ratios, per-rank negatives) would fail the comparison
    gap = max((singles["csd"][k] - singles["csd_l1"][k]).abs().max() for k in singles["csd"])
    assert gap > 1e-4, gap


def test_torchrun_runs_the_cli_command(tmp_path):
    """The documented launch: `torchrun --nproc_per_node 2 ... train --config run.yaml`."""
    import subprocess
    import sys

    import yaml

    folder = noise_folder(tmp_path / "hr", count=2, seed=2)
    # the full CSD loss through the CLI: runs, finite, one checkpoint
    config = {**TINY, "stage": "csd", "neg_num": 2, "random_vgg": True, "train_data": str(folder),
              "out_dir": str(tmp_path / "run"), "iterations": 2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "csd_fast.cli", "train",
           "--config", str(tmp_path / "run.yaml"), "num_workers=0"]
    # cwd outside the repository: the workers must import the installed csd_fast
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
