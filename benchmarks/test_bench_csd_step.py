"""One CSD training step: student (width 0.25) and teacher forward, the full loss,
backward and an Adam step, with peak memory on CUDA.

fused: csd_fast's loss (each negative's VGG features once, the fused distance op).
reference: the reference code's formulation, which runs VGG on the negatives repeated
to B x K images and pairs them with repeated anchors.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from csd_fast import EDSRCSD
from csd_fast.losses import CSDLoss, load_vgg19, make_negatives

from conftest import run_benchmark

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def reference_loss(vgg, student, teacher, hr, lr, scale, count, generator):
    negatives, _ = make_negatives(lr, scale, count, generator)
    b, k = student.size(0), count
    repeated = negatives.unsqueeze(0).expand(b, k, *negatives.shape[1:]).reshape(b * k, *negatives.shape[1:])
    loss = 0
    for w, fs, ft, fn in zip(WEIGHTS, vgg(student), vgg(teacher.detach()), vgg(repeated)):
        d_ts = (ft - fs).abs().mean()
        d_sn = (fn - fs.repeat_interleave(k, dim=0)).abs().view(b, k, -1).sum(1).mean()
        loss = loss + w * d_ts / (d_sn + 1e-7)
    return F.l1_loss(student, hr) + F.l1_loss(teacher, hr) + 200 * loss


def setup(device):
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = (EDSRCSD.from_preset("edsr" if cuda else "edsr-baseline", scale=4)).to(device)
    vgg = load_vgg19(random_weights=True).to(device)
    # CSD's HR patch is 192; the CPU suite runs 48 to finish in minutes
    # (CSD_FAST_BENCH_HR=192 runs the full size there too).
    lr_size = int(os.environ.get("CSD_FAST_BENCH_HR", 192 if cuda else 48)) // 4
    lr = torch.rand(16, 3, lr_size, lr_size, device=device) * 255
    hr = torch.rand(16, 3, lr_size * 4, lr_size * 4, device=device) * 255
    return model, vgg, lr, hr


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_csd_training_step(benchmark, device, impl):
    model, vgg, lr, hr = setup(device)
    model.backend = "fused" if impl == "fused" else "reference"
    fused_loss = CSDLoss(vgg, neg_num=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    benchmark.group = f"csd_step {device.type} B16 K10 HR{hr.size(-1)} " + \
        ("EDSR" if device.type == "cuda" else "EDSR-baseline")

    def loss_of(seed):
        gen = torch.Generator().manual_seed(seed)
        student, teacher = model(lr, 0.25), model(lr, 1.0)
        if impl == "fused":
            return fused_loss(student, teacher, hr, lr, 4, gen)["total"]
        return reference_loss(vgg, student, teacher, hr, lr, 4, 10, gen)

    with torch.no_grad():  # both formulations give one loss before anything is timed
        gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        student, teacher = model(lr, 0.25), model(lr, 1.0)
        a = fused_loss(student, teacher, hr, lr, 4, gen_a)["total"]
        b = reference_loss(vgg, student, teacher, hr, lr, 4, 10, gen_b)
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(2)
        loss.backward()
        optimizer.step()
        return loss

    run_benchmark(benchmark, step, device, rounds=3, measure_memory=True)
