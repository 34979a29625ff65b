"""One CSD training step: student (width 0.25) and teacher forward, the full loss,
backward and an Adam step, with peak memory on CUDA.

fused: the trainer's step (csd_fast.train.step.TrainStep): fused convolutions, csd_fast's
loss (each negative's VGG features once, the fused distance op) and, on CUDA in bf16,
channels-last tensors and the whole step replayed from a CUDA graph.
reference: the reference backend and the reference code's loss formulation, which runs
VGG on the negatives repeated to B x K images and pairs them with repeated anchors,
eagerly (under the same bf16 autocast in the bf16 rows).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from csd_fast import EDSRCSD
from csd_fast.losses import CSDLoss, load_vgg19, make_negatives
from csd_fast.train.step import TrainStep
from csd_fast.train.trainer import StageForward

from conftest import run_benchmark

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def reference_contrastive(vgg, student, teacher, negatives):
    """The reference code's contrastive term: VGG on the K upsampled negatives repeated to
    B x K images, each paired with a repeated anchor (B x K difference maps)."""
    b, k = student.size(0), negatives.size(0)
    repeated = negatives.unsqueeze(0).expand(b, k, *negatives.shape[1:]).reshape(b * k, *negatives.shape[1:])
    loss = 0
    for w, fs, ft, fn in zip(WEIGHTS, vgg(student), vgg(teacher.detach()), vgg(repeated)):
        d_ts = (ft - fs).abs().mean()
        d_sn = (fn - fs.repeat_interleave(k, dim=0)).abs().view(b, k, -1).sum(1).mean()
        loss = loss + w * d_ts / (d_sn + 1e-7)
    return loss


def reference_loss(vgg, student, teacher, hr, lr, scale, count, generator, negatives_lr=None):
    """The whole loss the reference way; negatives_lr (any K) replaces the draw from the batch."""
    if negatives_lr is None:
        negatives, _ = make_negatives(lr, scale, count, generator)
    else:
        negatives = F.interpolate(negatives_lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return (F.l1_loss(student, hr) + F.l1_loss(teacher, hr)
            + 200 * reference_contrastive(vgg, student, teacher, negatives))


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


def fused_step(model, vgg, lr, hr, amp_dtype, count=10, negatives_lr=None):
    """The trainer's step; a CUDA graph in the bf16 CUDA rows. negatives_lr: count LR
    negatives from outside the batch (negatives=dataset)."""
    cuda = lr.device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = TrainStep(StageForward(model, "csd", 0.25), list(model.parameters()),
                     CSDLoss(vgg, neg_num=count), optimizer,
                     torch.amp.GradScaler(lr.device.type, enabled=False), 4, amp_dtype, None,
                     check_finite=lambda terms: None, use_graph=cuda and amp_dtype is not None)
    return lambda: step(lr, hr, torch.Generator().manual_seed(2), negatives=negatives_lr)["total"]


def reference_step(model, vgg, lr, hr, amp_dtype, count=10, negatives_lr=None):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(lr.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            student, teacher = model(lr, 0.25), model(lr, 1.0)
            loss = reference_loss(vgg, student.float(), teacher.float(), hr, lr, 4, count,
                                  torch.Generator().manual_seed(2), negatives_lr)
        loss.backward()
        optimizer.step()
        return loss

    return step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_csd_training_step(benchmark, device, impl, precision):
    if precision == "bf16" and device.type != "cuda":
        pytest.skip("bf16 autocast rows are CUDA's")
    model, vgg, lr, hr = setup(device)
    fused_loss = CSDLoss(vgg, neg_num=10)
    benchmark.group = f"csd_step {device.type} {precision} B16 K10 HR{hr.size(-1)} " + \
        ("EDSR" if device.type == "cuda" else "EDSR-baseline")

    with torch.no_grad():  # both formulations give one loss before anything is timed
        model.backend = "fused"
        gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        student, teacher = model(lr, 0.25), model(lr, 1.0)
        a = fused_loss(student, teacher, hr, lr, 4, gen_a)["total"]
        b = reference_loss(vgg, student, teacher, hr, lr, 4, 10, gen_b)
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=0)

    model.backend = "fused" if impl == "fused" else "reference"
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    step = (fused_step if impl == "fused" else reference_step)(model, vgg, lr, hr, amp_dtype)
    first = step()
    assert torch.isfinite(first), first
    run_benchmark(benchmark, step, device, rounds=3 if device.type == "cpu" else 10,
                  warmup=5 if device.type == "cuda" else 1, measure_memory=True)
