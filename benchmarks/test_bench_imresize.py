"""MATLAB-bicubic downscaling of a DIV2K-sized image, x1/4 with antialiasing.

fused: csd_fast.data.imresize (weight tables built once per dimension, one matmul or
gather per pass). reference: a plain loop over output lines, each computing its own
taps from the kernel formula and summing the input lines they point at."""
import math

import pytest
import torch

from csd_fast.data.imresize import imresize

from conftest import run_benchmark

SHAPE, SCALE = (3, 1020, 768), 1 / 4


def _cubic(d: float) -> float:
    d = abs(d)
    if d <= 1:
        return 1.5 * d ** 3 - 2.5 * d ** 2 + 1
    if d <= 2:
        return -0.5 * d ** 3 + 2.5 * d ** 2 - 4 * d + 2
    return 0.0


def reference_imresize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB imresize(x, scale, 'bicubic') for one scale on both axes, a line at a time."""
    shrink = scale < 1
    width = 4 / scale if shrink else 4
    for dim in (-2, -1):  # equal scales: MATLAB does H first
        x = x.movedim(dim, 0)
        n = x.size(0)
        lines = []
        for j in range(1, math.ceil(n * scale) + 1):
            u = j / scale + 0.5 * (1 - 1 / scale)  # 1-based input position of output j
            first = math.floor(u - width / 2)
            taps = range(first, first + math.ceil(width) + 2)
            w = [scale * _cubic(scale * (u - k)) if shrink else _cubic(u - k) for k in taps]
            total = sum(w)
            # Taps beyond the image read its edge line, as MATLAB's index clamping does.
            lines.append(sum(wk / total * x[min(max(k, 1), n) - 1] for wk, k in zip(w, taps) if wk))
        x = torch.stack(lines).movedim(0, dim)
    return x


IMPLS = {"fused": imresize, "reference": reference_imresize}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_imresize(benchmark, device, impl):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(SHAPE, generator=gen) * 255).to(device)
    benchmark.group = f"imresize {device.type} {'x'.join(map(str, SHAPE))} float32 x1/4"
    want = reference_imresize(x.double(), SCALE)
    torch.testing.assert_close(imresize(x.double(), SCALE), want, rtol=0, atol=1e-9)
    got = IMPLS[impl](x, SCALE)
    assert got.shape == (3, 255, 192)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-3)
    run_benchmark(benchmark, lambda: IMPLS[impl](x, SCALE), device)
