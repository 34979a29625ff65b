"""EDSRCSD x4 inference, fused backend against the reference backend and torch.compile of
it, same weights and input, at the CSD student width 0.25 and the teacher width 1.0.

CPU: EDSR-baseline on a 128x128 LR image and a DIV2K-sized one (510x339, the x4 LR of
a 2040x1356 DIV2K image). CUDA: the paper's EDSR at 128x128 and DIV2K size."""
import pytest
import torch

from csd_fast import EDSRCSD

from conftest import run_benchmark

SIZES = {"128x128": (128, 128), "div2k_510x339": (339, 510)}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(device):
        if device.type not in cache:
            torch.manual_seed(0)
            preset = "edsr" if device.type == "cuda" else "edsr-baseline"
            cache[device.type] = EDSRCSD.from_preset(preset, scale=4).to(device).eval()
        return cache[device.type]

    return get


@pytest.mark.parametrize("impl", ["fused", "reference", "compile"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_edsr_forward(benchmark, device, models, width, size, impl):
    """compile: torch.compile (default mode) of the reference backend, timed only (its
    compilation would take the untimed CI run minutes)."""
    if impl == "compile" and benchmark.disabled:
        pytest.skip("torch.compile rows are timed runs only")
    model = models(device)
    h, w = SIZES[size]
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2)).to(device) * 255
    name = "EDSR" if device.type == "cuda" else "EDSR-baseline"
    benchmark.group = f"edsr_forward {device.type} {name} x4 width{width} {size}"
    with torch.no_grad():
        model.backend = "reference"
        want = model(x, width)
        forward = lambda: model(x, width)  # noqa: E731
        if impl == "compile":
            torch._dynamo.reset()
            compiled = torch.compile(lambda t: model(t, width))
            forward = lambda: compiled(x)  # noqa: E731
        else:
            model.backend = impl
        torch.testing.assert_close(forward(), want, rtol=1e-4, atol=2e-3)
        run_benchmark(benchmark, forward, device, rounds=10 if size == "128x128" else 3)
