"""negatives_scaling: what K negatives cost, K in {1, 4, 10, 32, 64, 128, 256, 1024}, with
peak memory.

- contrastive_loss: CSD's contrastive term over the five VGG layers, VGG forwards included,
  forward + backward to the student. fused = csd_fast's ContrastiveLoss (the negatives
  streamed through VGG19 in chunks of the batch size, with no graph, each chunk reduced by
  the fused op to anchor-sized sums and freed); reference = the reference code's
  formulation (VGG on the negatives repeated to B x K images, B x K difference maps).
- step: one whole CSD training step (as benchmarks/test_bench_csd_step.py, fp32), its K
  negatives LR images from outside the batch (negatives=dataset), so K may exceed B.

Sizes: B 16, HR 192 (the recipe) on CUDA; B 8, HR 32 on the CPU so the group finishes in
minutes (CSD_FAST_BENCH_NEG_BATCH / CSD_FAST_BENCH_NEG_HR change them); untimed
(--benchmark-disable, as CI runs it) only K 1 and 64, at B 2, HR 16. A reference row is
skipped, saying how much it would need, where reference_peak_bytes exceeds 80% of the
memory free on the device (or CUDA runs out), and on the CPU beyond K = 256, where one
call takes minutes (its time and memory grow linearly; the rows up to 256 show it).
`python benchmarks/plot_negatives_scaling.py bench.json` draws time and memory against K.
"""
import functools
import os

import pytest
import torch

from csd_fast import EDSRCSD
from csd_fast.losses import ContrastiveLoss, CSDLoss, load_vgg19

from conftest import run_benchmark
from test_bench_csd_step import fused_step, reference_contrastive, reference_loss, reference_step

K_VALUES = (1, 4, 10, 32, 64, 128, 256, 1024)
UNTIMED_K = (1, 64)
REFERENCE_MAX_K_CPU = 256
IMPLS = ("fused", "reference")


def sizes(device, disabled: bool, k: int) -> tuple[int, int]:
    """(batch, HR patch side) of the rows."""
    if disabled:
        if k not in UNTIMED_K:
            pytest.skip(f"untimed, K in {UNTIMED_K} only")
        return 2, 16
    if device.type == "cuda":
        return 16, 192
    return (int(os.environ.get("CSD_FAST_BENCH_NEG_BATCH", 8)),
            int(os.environ.get("CSD_FAST_BENCH_NEG_HR", 32)))


def reference_peak_bytes(batch: int, k: int, hr: int) -> int:
    """What the reference formulation holds at its peak, from its B x K images of side hr:
    the repeated negatives' five VGG feature maps (64 + 128/4 + 256/16 + 512/64 + 512/256 =
    122 channels at full resolution) and the difference maps saved for backward (as many),
    plus the largest VGG activations in flight (2 x 64 channels). Measured on the CPU at
    B16 K10 HR192: 7.7 GB, this estimate 8.8 GB."""
    return batch * k * hr * hr * 4 * (2 * 122 + 2 * 64)


def free_bytes(device) -> int:
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the earlier rows' cached blocks count as free
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def start_row(benchmark, device, impl: str, k: int, part: str, model: str = "") -> tuple[int, int]:
    """(batch, HR side) of this row, its group named; skipped where the reference cannot fit."""
    batch, hr = sizes(device, benchmark.disabled, k)
    if impl == "reference":
        if device.type == "cpu" and k > REFERENCE_MAX_K_CPU:
            pytest.skip(f"the reference formulation on the CPU stops at K = {REFERENCE_MAX_K_CPU}: "
                        f"at K = {k} one call takes minutes")
        need, free = reference_peak_bytes(batch, k, hr), free_bytes(device)
        if need > 0.8 * free:
            pytest.skip(f"the reference formulation needs ~{need / 2**30:.1f} GiB at B{batch} K{k} "
                        f"HR{hr}; {free / 2**30:.1f} GiB free on {device.type}")
    benchmark.group = f"negatives_scaling {device.type} {part} B{batch} HR{hr} K{k}{model}"
    return batch, hr


@functools.lru_cache(maxsize=None)
def vgg_on(device: str):
    torch.manual_seed(0)
    return load_vgg19(random_weights=True).to(device)


def images(count, side, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 3, side, side, generator=gen) * 255).to(device)


def measure(benchmark, device, step, part, k):
    """Time step (its first call, the agreement check, already warmed up the CPU rows)."""
    benchmark.extra_info.update(part=part, K=k)
    cuda = device.type == "cuda"
    try:
        run_benchmark(benchmark, step, device, rounds=5 if cuda else 3, warmup=2 if cuda else 0,
                      measure_memory=True)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of memory on {torch.cuda.get_device_name(device)} at K{k}")


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("impl", IMPLS)
def test_negatives_scaling_contrastive_loss(benchmark, device, impl, k):
    batch, hr = start_row(benchmark, device, impl, k, "contrastive_loss")
    vgg = vgg_on(str(device))
    student = images(batch, hr, device, 1).requires_grad_()
    teacher, negatives = images(batch, hr, device, 2), images(k, hr, device, 3)
    fused = ContrastiveLoss(vgg)

    def loss():
        if impl == "fused":
            return fused(student, teacher, negatives)
        return reference_contrastive(vgg, student, teacher, negatives)

    def step():
        return torch.autograd.grad(loss(), student)[0]

    # agreement with the other formulation: plain PyTorch one negative at a time for the
    # fused row, csd_fast's loss for the reference row (both far cheaper than the reference)
    other = ContrastiveLoss(vgg, backend="reference") if impl == "fused" else fused
    with torch.no_grad():
        torch.testing.assert_close(loss().float(), other(student, teacher, negatives), rtol=1e-4, atol=0)
    measure(benchmark, device, step, "contrastive_loss", k)


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("impl", IMPLS)
def test_negatives_scaling_step(benchmark, device, impl, k):
    cuda = device.type == "cuda"
    batch, hr = start_row(benchmark, device, impl, k, "step", " EDSR" if cuda else " EDSR-baseline")
    torch.manual_seed(0)
    model = EDSRCSD.from_preset("edsr" if cuda else "edsr-baseline", scale=4).to(device)
    vgg = vgg_on(str(device))
    lr, hr_images = images(batch, hr // 4, device, 1), images(batch, hr, device, 2)
    negatives_lr = images(k, hr // 4, device, 3)

    with torch.no_grad():  # both formulations give one loss
        model.backend = "fused"
        student, teacher = model(lr, 0.25), model(lr, 1.0)
        want = CSDLoss(vgg, neg_num=k)(student, teacher, hr_images, lr, 4,
                                       negatives_lr=negatives_lr)["total"]
        if impl == "reference":
            got = reference_loss(vgg, student, teacher, hr_images, lr, 4, k, None, negatives_lr)
            torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=0)
    model.backend = impl
    make = fused_step if impl == "fused" else reference_step
    step = make(model, vgg, lr, hr_images, None, count=k, negatives_lr=negatives_lr)
    assert torch.isfinite(step())
    measure(benchmark, device, step, "step", k)
