"""csd_fast.data.imresize against hand-computed MATLAB bicubic values and MATLAB-made LR images."""
import importlib
import math

import numpy as np
import pytest
import torch

from _data import image_pairs, param
from csd_fast.data.imresize import contributions, cubic, imresize


def matlab_round(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp(0, 255)


# Keys' a = -0.5 kernel at the offsets an x2 resize uses, worked out by hand.
C025, C075, C125, C175 = 0.8671875, 0.2265625, -0.0703125, -0.0234375


def test_cubic_kernel_by_hand():
    x = torch.tensor([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.75], dtype=torch.float64)
    want = torch.tensor([1, C025, C075, 0, C125, C175, 0, 0, C075], dtype=torch.float64)
    assert torch.equal(cubic(x), want)


def test_upscale_x2_ramp_by_hand():
    row = torch.arange(8, dtype=torch.float64).mul(10).view(1, 8)
    out = imresize(row, 2)
    assert out.shape == (2, 16)
    assert torch.equal(out[0], out[1])  # one input row: both output rows copy it
    # Output pixel j sits at input position u = j/2 + 1/4 (1-based); taps beyond the
    # edge read the edge pixel, so the first two outputs see 0, 0, 0, 10 and 0, 0, 10, 20.
    assert out[0, 0].item() == pytest.approx(C125 * 10, abs=1e-12)
    assert out[0, 1].item() == pytest.approx(C075 * 10 + C175 * 20, abs=1e-12)
    assert out[0, -1].item() == pytest.approx(70 - C125 * 10, abs=1e-12)
    # Away from the borders the cubic reproduces a ramp exactly: 10 * (u - 1).
    u = torch.arange(1, 17, dtype=torch.float64) / 2 + 0.25
    torch.testing.assert_close(out[0, 3:-3], 10 * (u[3:-3] - 1), rtol=0, atol=1e-12)


def test_downscale_half_with_antialiasing_by_hand():
    x = torch.randn(1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = imresize(x, 0.5)
    assert out.shape == (1, 8)
    # Widened kernel 0.5 * cubic(0.5 d): output j (1-based) is centred at 2j - 0.5 and
    # weighs inputs 2j-4 .. 2j+3 with these eight taps (they sum to one).
    taps = torch.tensor([C175, C125, C075, C025, C025, C075, C125, C175], dtype=torch.float64) / 2
    assert taps.sum().item() == pytest.approx(1.0, abs=1e-15)
    for j in (3, 4, 5, 6):  # 1-based outputs whose taps stay inside the image
        want = (taps * x[0, 2 * j - 5:2 * j + 3]).sum()
        assert out[0, j - 1].item() == pytest.approx(want.item(), abs=1e-12)
    # Output 1 weighs inputs -2 .. 5; those up to 1 all read pixel 1.
    first = taps[:4].sum() * x[0, 0] + (taps[4:] * x[0, 1:5]).sum()
    assert out[0, 0].item() == pytest.approx(first.item(), abs=1e-12)
    no_aa = imresize(x, 0.5, antialiasing=False)
    # Without antialiasing output 4 (at 7.5) uses the plain kernel at offsets +-0.5, +-1.5.
    c05, c15 = cubic(torch.tensor([0.5, 1.5], dtype=torch.float64)).tolist()
    want = c15 * x[0, 5] + c05 * x[0, 6] + c05 * x[0, 7] + c15 * x[0, 8]  # inputs 6..9, 1-based
    assert no_aa[0, 3].item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("scale", [4, 3, 2, 1.5, 1, 0.7, 1 / 2, 1 / 3, 1 / 4, 1 / 8])
@pytest.mark.parametrize("in_len", [1, 2, 5, 17, 64])
def test_weights_sum_to_one_and_indices_in_range(in_len, scale):
    out_len = math.ceil(in_len * scale)
    idx, w = contributions(in_len, out_len, scale)
    assert idx.shape == w.shape and idx.size(0) == out_len
    torch.testing.assert_close(w.sum(1), torch.ones(out_len, dtype=torch.float64), rtol=0, atol=1e-14)
    assert idx.min() >= 0 and idx.max() < in_len


@pytest.mark.parametrize("scale", [2, 3, 4, 2.5, 1.3, 1 / 2, 1 / 3, 1 / 4, 0.7])
def test_constant_image_stays_constant(scale):
    x = torch.full((3, 23, 18), 97.25, dtype=torch.float64)
    out = imresize(x, scale)
    torch.testing.assert_close(out, torch.full_like(out, 97.25), rtol=0, atol=1e-11)


def test_identity_at_scale_one():
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    assert torch.equal(imresize(x, 1), x)
    assert torch.equal(imresize(x, size=(9, 7)), x)
    assert torch.equal(imresize(x, 1, antialiasing=False), x)


@pytest.mark.parametrize("shape, scale, want", [
    ((7, 9), 1 / 3, (3, 3)),
    ((7, 9), 0.5, (4, 5)),
    ((7, 9), 2.5, (18, 23)),
    ((255, 510), 1 / 3, (85, 170)),
    ((1, 1), 4, (4, 4)),
    ((3, 5), 0.01, (1, 1)),
])
def test_output_size_is_ceil(shape, scale, want):
    assert imresize(torch.zeros(shape), scale).shape == want


def test_size_argument_and_leading_dims():
    x = torch.rand(2, 2, 3, 10, 12)
    out = imresize(x, size=(5, 17))
    assert out.shape == (2, 2, 3, 5, 17)


def test_batched_equals_per_image():
    x = torch.rand(4, 3, 21, 16, dtype=torch.float64) * 255
    for scale in (1 / 3, 2):
        batched = imresize(x, scale)
        single = torch.stack([imresize(img, scale) for img in x])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)


def test_float32_agrees_with_float64():
    x = torch.rand(3, 40, 33, dtype=torch.float64) * 255
    for scale in (1 / 4, 3):
        out32 = imresize(x.float(), scale)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), imresize(x, scale), rtol=0, atol=1e-3)


def test_integer_input_gives_float32_and_rounds_between_passes():
    # A sharp step rings past 0 and 255 after the first pass; MATLAB's uint8 arithmetic
    # saturates and rounds that intermediate result, which changes the final values.
    x = torch.zeros(1, 24, 24, dtype=torch.uint8)
    x[:, 6:18, 6:18] = 255
    out = imresize(x, 0.5)
    assert out.dtype == torch.float32 and out.shape == (1, 12, 12)
    idx, w = contributions(24, 12, 0.5)
    first = (x.double()[:, idx] * w[:, :, None]).sum(2)  # along H, H first (equal scales)
    first = matlab_round(first)
    want = (first[:, :, idx] * w).sum(-1)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-4)
    plain = imresize(x.double(), 0.5)
    assert (plain - want).abs().max() > 1  # the float path does not saturate in between


def test_integer_input_resizes_smaller_scale_first():
    x = torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = imresize(x, size=(14, 6))  # W shrinks more, so MATLAB resizes W first
    iw, ww = contributions(20, 6, 6 / 20)
    ih, wh = contributions(20, 14, 14 / 20)
    first = matlab_round((x.double()[..., iw] * ww).sum(-1))
    want = (first[:, ih] * wh[:, :, None]).sum(2)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gather_path_matches_dense_path(monkeypatch, dtype):
    module = importlib.import_module("csd_fast.data.imresize")  # the package re-exports the function
    x = (torch.rand(2, 3, 30, 26, dtype=torch.float64) * 255).to(dtype)
    dense = [imresize(x, s) for s in (1 / 3, 2.5)]
    monkeypatch.setattr(module, "DENSE_MAX_ELEMENTS", 0)
    gathered = [imresize(x, s) for s in (1 / 3, 2.5)]
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    for a, b in zip(dense, gathered):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_reduced_precision_matmul_setting_is_not_used():
    x = torch.rand(3, 30, 26) * 255
    want = imresize(x.double(), 0.25)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # would allow bf16/TF32 matmuls
        got = imresize(x, 0.25)
    finally:
        torch.set_float32_matmul_precision(previous)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("scale", [1 / 4, 3])
def test_cuda_matches_cpu(device, scale):
    x = torch.rand(2, 3, 37, 29, dtype=torch.float64) * 255
    torch.testing.assert_close(imresize(x.to(device), scale).cpu(), imresize(x, scale), rtol=0, atol=1e-9)
    x8 = (x.round()).to(torch.uint8)
    torch.testing.assert_close(imresize(x8.to(device), scale).cpu(), imresize(x8, scale), rtol=0, atol=1e-4)


@pytest.mark.parametrize("args, kwargs, err", [
    ((np.zeros((4, 4)), 2), {}, TypeError),
    ((torch.zeros(4), 2), {}, ValueError),
    ((torch.zeros(4, 4),), {}, ValueError),
    ((torch.zeros(4, 4), 2), {"size": (8, 8)}, ValueError),
    ((torch.zeros(4, 4), 0), {}, ValueError),
    ((torch.zeros(4, 4), -1.5), {}, ValueError),
    ((torch.zeros(4, 4), float("nan")), {}, ValueError),
    ((torch.zeros(0, 4), 2), {}, ValueError),
    ((torch.zeros(4, 4),), {"size": (0, 3)}, ValueError),
    ((torch.zeros(4, 4),), {"size": (3,)}, ValueError),
    ((torch.zeros(4, 4, dtype=torch.complex64), 2), {}, TypeError),
])
def test_errors(args, kwargs, err):
    with pytest.raises(err):
        imresize(*args, **kwargs)


@pytest.mark.parametrize("name, float_levels", [param("Set5", 2), param("Set14", 12)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_matlab_lr(name, float_levels, scale):
    """The LR PNGs were made by MATLAB's imresize on the uint8 HR (cropped to a multiple of
    the scale): uint8 input reproduces them exactly. Float input skips the saturation and
    rounding between the two passes, which moves pixels at hard edges by a few grey levels
    (Set14's sharper edges by up to 12)."""
    worst_float = 0.0
    for stem, lr, hr in image_pairs(name, scale):
        lr = lr.double()
        assert torch.equal(matlab_round(imresize(hr, 1 / scale).double()), lr), stem
        worst_float = max(worst_float, (matlab_round(imresize(hr.double(), 1 / scale)) - lr).abs().max().item())
    assert worst_float <= float_levels
