"""The CPU's banded forwards (csrc/cpu/banded_conv.cpp): conv3x3_pixel_shuffle and
residual_block_inference, run over bands of rows, against plain PyTorch in float64,
with band sizes small enough that every test image is cut into several bands."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from csd_fast import ops

from _conv_helpers import conv, layout, shuffle

D = torch.float64
CL = torch.channels_last
LIB = torch.ops.csd_fast

# 0: the automatic size (one band at these image sizes); 1, 2, 3: edges everywhere
BAND_ROWS = [0, 1, 2, 3]
SIZES = [(1, 1, 1), (2, 7, 9), (1, 11, 4), (3, 8, 5), (1, 2, 33)]
LAYOUTS = ["nchw", "channels_last", "strided"]
FEATS = 8


@pytest.fixture(params=BAND_ROWS)
def band_rows(request):
    previous = LIB.set_cpu_band_rows(request.param)
    yield request.param
    LIB.set_cpu_band_rows(previous)


def params(n_out, n_in, dtype=D):
    return torch.randn(n_out, n_in, 3, 3, dtype=dtype) * 0.3, torch.randn(n_out, dtype=dtype)


def expected_format(x):
    cl = x.is_contiguous(memory_format=CL) and not x.is_contiguous()
    return CL if cl else torch.contiguous_format


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("n,h,w", SIZES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_conv3x3_pixel_shuffle_bands(band_rows, scale, width, n, h, w, kind):
    c = max(1, int(FEATS * width))
    weight, bias = params(scale * scale * FEATS, FEATS + 1)
    x = layout(torch.randn(n, FEATS + 1, h, w, dtype=D), kind)
    got = ops.conv3x3_pixel_shuffle(x, weight, bias, c, c, scale)
    want = shuffle(conv(x, weight, bias, scale * scale * c, c), scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=expected_format(x))


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("n,h,w", SIZES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_residual_block_inference_bands(band_rows, width, n, h, w, kind):
    c = max(1, int(FEATS * width))
    w1, b1 = params(FEATS, FEATS)
    w2, b2 = params(FEATS, FEATS)
    x = layout(torch.randn(n, FEATS, h, w, dtype=D), kind)
    want = x[:, :c] + 0.3 * conv(F.relu(conv(x, w1, b1, c, c)), w2, b2, c, c)
    got = LIB.residual_block_inference(x, w1, b1, w2, b2, c, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=expected_format(x))
    with torch.no_grad():  # the wrapper's route where no gradient is needed
        torch.testing.assert_close(ops.residual_block(x, w1, b1, w2, b2, c, 0.3), want,
                                   rtol=1e-12, atol=1e-12)


def test_the_wrapper_keeps_autograd_where_a_gradient_is_needed(band_rows):
    w1, b1 = (t.requires_grad_() for t in params(6, 6))
    w2, b2 = (t.requires_grad_() for t in params(6, 6))
    x = torch.randn(2, 6, 7, 5, dtype=D, requires_grad=True)
    assert gradcheck(lambda x, *p: ops.residual_block(x, *p, 4, 0.5), (x, w1, b1, w2, b2))
    up_w, up_b = (t.requires_grad_() for t in params(24, 6))
    assert gradcheck(lambda x, w, b: ops.conv3x3_pixel_shuffle(x, w, b, 3, 5, 2), (x, up_w, up_b))


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_opcheck(band_rows, kind):
    x = layout(torch.randn(2, 6, 5, 4, dtype=D), kind)
    w, b = params(6, 6)
    w2, b2 = params(6, 6)
    up_w, up_b = params(24, 6)
    torch.library.opcheck(LIB.residual_block_inference.default, (x, w, b, w2, b2, 5, 0.5))
    torch.library.opcheck(LIB.conv3x3_pixel_shuffle.default,
                          (x.requires_grad_(), up_w.requires_grad_(), up_b.requires_grad_(), 3, 6, 2))


def test_torch_compile_of_the_inference_route():
    w1, b1 = params(8, 8, torch.float32)
    w2, b2 = params(8, 8, torch.float32)

    def net(x):
        return ops.residual_block(x, w1, b1, w2, b2, 8, 0.5)

    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), net(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_and_master_weights(band_rows, dtype):
    """bfloat16 inputs with float32 master weights (an autocast run), against float64."""
    w1, b1 = params(16, 16, torch.float32)
    w2, b2 = params(16, 16, torch.float32)
    up_w, up_b = params(64, 16, torch.float32)
    x = torch.randn(1, 16, 9, 10).contiguous(memory_format=CL)
    want = x.double() + conv(F.relu(conv(x.double(), w1.double(), b1.double(), 16, 16)),
                             w2.double(), b2.double(), 16, 16)
    want_up = shuffle(conv(want, up_w.double(), up_b.double(), 64, 16), 2)
    y = LIB.residual_block_inference(x.to(dtype), w1, b1, w2, b2, 16, 1.0)
    up = ops.conv3x3_pixel_shuffle(y, up_w, up_b, 16, 16, 2)
    assert y.dtype == up.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for got, ref in ((y, want), (up, want_up)):
        assert ((got.double() - ref).norm() / ref.norm()) < tol


def test_band_rows_setting():
    previous = LIB.set_cpu_band_rows(5)
    try:
        assert LIB.set_cpu_band_rows(7) == 5
        with pytest.raises(RuntimeError, match="rows must be >= 0"):
            LIB.set_cpu_band_rows(-1)
    finally:
        LIB.set_cpu_band_rows(previous)
