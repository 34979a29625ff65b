"""The sliced-conv ops (sliced_conv3x3, residual_block, conv3x3_pixel_shuffle) against
plain PyTorch (tests/_conv_helpers.py), in float64: values, gradients, layouts, widths, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from csd_fast import ops

from _conv_helpers import conv, layout, shuffle

D = torch.float64
CL = torch.channels_last


def params(n_out, n_in, device="cpu", dtype=D):
    w = torch.randn(n_out, n_in, 3, 3, dtype=dtype, device=device) * 0.3
    b = torch.randn(n_out, dtype=dtype, device=device)
    return w.requires_grad_(), b.requires_grad_()


def leaf(x):
    return x.detach().requires_grad_()


def assert_grads_close(got_out, want_out, got_inputs, want_inputs, **tol):
    g = torch.randn_like(want_out)
    got = torch.autograd.grad(got_out, got_inputs, g)
    want = torch.autograd.grad(want_out, want_inputs, g)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)


FEATS = 16
WIDTHS = [0.25, 0.3, 0.5, 1.0]
SIZES = [(1, 1, 1), (3, 7, 33), (1, 33, 7), (2, 5, 1)]
LAYOUTS = ["nchw", "channels_last", "strided"]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n,h,w", SIZES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("epilogue", ["none", "relu", "residual"])
def test_sliced_conv3x3_matches_plain_pytorch(device, width, n, h, w, kind, epilogue):
    c = int(FEATS * width)
    weight, bias = params(FEATS, FEATS, device)
    x = leaf(layout(torch.randn(n, FEATS, h, w, dtype=D, device=device), kind))
    residual = leaf(torch.randn(n, c, h, w, dtype=D, device=device)) if epilogue == "residual" else None
    got = ops.sliced_conv3x3(x, weight, bias, c, c, relu=epilogue == "relu", residual=residual,
                             res_scale=0.3)
    want = conv(x, weight, bias, c, c)
    if epilogue == "relu":
        want = F.relu(want)
    if residual is not None:
        want = residual + 0.3 * want
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=CL if kind == "channels_last" and c > 1 and h * w > 1
                             else torch.contiguous_format)
    inputs = [x, weight, bias] + ([residual] if residual is not None else [])
    assert_grads_close(got, want, inputs, inputs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_out,n_in", [(3, 16), (16, 3), (5, 7)])
def test_sliced_conv3x3_unequal_slices(device, n_out, n_in):
    """The head (3 -> w) and tail (w -> 3) shapes, and a prefix narrower than the input."""
    weight, bias = params(16, 16, device)
    x = leaf(torch.randn(2, 16, 6, 5, dtype=D, device=device))
    got = ops.sliced_conv3x3(x, weight, bias, n_out, n_in)
    want = conv(x, weight, bias, n_out, n_in)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_grads_close(got, want, [x, weight, bias], [x, weight, bias])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n,h,w", SIZES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_residual_block_matches_plain_pytorch(device, width, n, h, w, kind):
    c = int(FEATS * width)
    w1, b1 = params(FEATS, FEATS, device)
    w2, b2 = params(FEATS, FEATS, device)
    x = leaf(layout(torch.randn(n, c, h, w, dtype=D, device=device), kind))
    got = ops.residual_block(x, w1, b1, w2, b2, c, 0.1)
    want = x + 0.1 * conv(F.relu(conv(x, w1, b1, c, c)), w2, b2, c, c)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = [x, w1, b1, w2, b2]
    assert_grads_close(got, want, inputs, inputs, rtol=1e-10, atol=1e-10)


def test_residual_block_uses_the_input_prefix(device):
    """Input wider than the block: only its first `channels` channels are read."""
    w1, b1 = params(8, 8, device)
    w2, b2 = params(8, 8, device)
    x = leaf(torch.randn(2, 8, 5, 6, dtype=D, device=device))
    got = ops.residual_block(x, w1, b1, w2, b2, 3, 1.0)
    want = x[:, :3] + conv(F.relu(conv(x, w1, b1, 3, 3)), w2, b2, 3, 3)
    torch.testing.assert_close(got, want)
    assert_grads_close(got, want, [x, w1, w2], [x, w1, w2])


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n,h,w", SIZES)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_conv3x3_pixel_shuffle_matches_plain_pytorch(device, scale, width, n, h, w, kind):
    c = int(FEATS * width)
    weight, bias = params(scale * scale * FEATS, FEATS, device)
    x = leaf(layout(torch.randn(n, c, h, w, dtype=D, device=device), kind))
    got = ops.conv3x3_pixel_shuffle(x, weight, bias, c, c, scale)
    want = shuffle(conv(x, weight, bias, scale * scale * c, c), scale)
    assert got.shape == (n, c, h * scale, w * scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_grads_close(got, want, [x, weight, bias], [x, weight, bias], rtol=1e-10, atol=1e-10)


def test_references_match_the_written_out_formulas():
    weight, bias = params(16, 8)
    x = torch.randn(2, 8, 5, 4, dtype=D)
    torch.testing.assert_close(ops.conv3x3_pixel_shuffle_reference(x, weight, bias, 3, 5, 2),
                               shuffle(conv(x, weight, bias, 12, 5), 2))
    w2, b2 = params(16, 8)
    torch.testing.assert_close(
        ops.residual_block_reference(x, weight, bias, w2, b2, 4, 0.5),
        x[:, :4] + 0.5 * conv(F.relu(conv(x, weight, bias, 4, 4)), w2, b2, 4, 4))


def test_gradients_land_in_the_weight_prefix():
    weight, bias = params(8, 8)
    x = torch.randn(1, 8, 4, 4, dtype=D)
    ops.sliced_conv3x3(x, weight, bias, 3, 5, relu=True).square().sum().backward()
    assert weight.grad.shape == weight.shape and bias.grad.shape == bias.shape
    assert weight.grad[:3, :5].abs().sum() > 0
    assert weight.grad[3:].abs().sum() == 0 and weight.grad[:, 5:].abs().sum() == 0
    assert bias.grad[3:].abs().sum() == 0

    up_w, up_b = params(32, 8)
    ops.conv3x3_pixel_shuffle(x, up_w, up_b, 3, 8, 2).square().sum().backward()
    assert up_w.grad[:12].abs().sum() > 0 and up_w.grad[12:].abs().sum() == 0
    assert up_b.grad[12:].abs().sum() == 0


def test_gradcheck_small_double():
    x = torch.randn(2, 5, 4, 3, dtype=D, requires_grad=True)
    w, b = params(6, 6)
    w2, b2 = params(6, 6)
    up_w, up_b = params(24, 6)
    res = torch.randn(2, 3, 4, 3, dtype=D, requires_grad=True)
    assert gradcheck(lambda x, w, b: ops.sliced_conv3x3(x, w, b, 4, 3, relu=True), (x, w, b))
    assert gradcheck(lambda x, w, b, r: ops.sliced_conv3x3(x, w, b, 3, 4, residual=r, res_scale=0.3),
                     (x, w, b, res))
    assert gradcheck(lambda x, *p: ops.residual_block(x, *p, 4, 0.5), (x, w, b, w2, b2))
    assert gradcheck(lambda x, w, b: ops.conv3x3_pixel_shuffle(x, w, b, 2, 5, 3), (x, up_w, up_b))


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_opcheck(kind):
    x = layout(torch.randn(2, 6, 5, 4, dtype=D), kind).requires_grad_()
    w, b = params(6, 6)
    w2, b2 = params(6, 6)
    up_w, up_b = params(24, 6)
    res = torch.randn(2, 4, 5, 4, dtype=D, requires_grad=True)
    lib = torch.ops.csd_fast
    torch.library.opcheck(lib.sliced_conv3x3.default, (x, w, b, 4, 5, True, None, 1.0))
    torch.library.opcheck(lib.sliced_conv3x3.default, (x, w, b, 4, 6, False, res, 0.2))
    torch.library.opcheck(lib.residual_block.default, (x, w, b, w2, b2, 5, 0.5))
    torch.library.opcheck(lib.conv3x3_pixel_shuffle.default, (x, up_w, up_b, 3, 6, 2))


def test_torch_compile_fullgraph():
    w1, b1 = params(8, 8, dtype=torch.float32)
    w2, b2 = params(8, 8, dtype=torch.float32)
    up_w, up_b = params(32, 8, dtype=torch.float32)

    def net(x):
        y = ops.residual_block(x, w1, b1, w2, b2, 8, 0.5)
        y = ops.sliced_conv3x3(y, w1, b1, 8, 8, residual=x)
        return ops.conv3x3_pixel_shuffle(y, up_w, up_b, 8, 8, 2)

    x = torch.randn(1, 8, 6, 7)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), net(x))


def test_bfloat16_close_to_float64():
    w1, b1 = params(16, 16)
    w2, b2 = params(16, 16)
    x = torch.randn(2, 16, 9, 10, dtype=D)
    want = x + conv(F.relu(conv(x, w1, b1, 16, 16)), w2, b2, 16, 16)
    bf = [t.detach().to(torch.bfloat16) for t in (x, w1, b1, w2, b2)]
    got = ops.residual_block(*bf, 16, 1.0)
    assert got.dtype == torch.bfloat16
    err = (got.double() - want).norm() / want.norm()
    assert err < 2e-2, err


def bad_calls():
    x = torch.randn(1, 8, 5, 5)
    w, b = torch.randn(8, 8, 3, 3), torch.randn(8)
    wu, bu = torch.randn(32, 8, 3, 3), torch.randn(32)
    return [
        ("dtype", lambda: ops.sliced_conv3x3(x.double(), w, b, 8, 8), "dtype"),
        ("half weight, float input",
         lambda: ops.sliced_conv3x3(x, w.bfloat16(), b.bfloat16(), 8, 8), "does not go with"),
        ("bias dtype", lambda: ops.sliced_conv3x3(x.bfloat16(), w, b.bfloat16(), 8, 8),
         "the weight's dtype"),
        ("integer", lambda: ops.sliced_conv3x3(x.long(), w.long(), b.long(), 8, 8), "floating"),
        ("3-D input", lambda: ops.sliced_conv3x3(x[0], w, b, 8, 8), "4-D"),
        ("out beyond weight", lambda: ops.sliced_conv3x3(x, w, b, 9, 8), "out_channels 9"),
        ("in beyond weight", lambda: ops.sliced_conv3x3(x, w, b, 8, 9), "in_channels 9"),
        ("in beyond input", lambda: ops.sliced_conv3x3(x[:, :4], w, b, 8, 8), "exceeds the input"),
        ("zero width", lambda: ops.sliced_conv3x3(x, w, b, 0, 8), "out_channels 0"),
        ("5x5 weight", lambda: ops.sliced_conv3x3(x, torch.randn(8, 8, 5, 5), b, 8, 8), "3, 3"),
        ("bias", lambda: ops.sliced_conv3x3(x, w, b[:4], 8, 8), "bias"),
        ("relu and residual", lambda: ops.sliced_conv3x3(x, w, b, 8, 8, True, x), "cannot be combined"),
        ("residual shape", lambda: ops.sliced_conv3x3(x, w, b, 4, 8, residual=x), "residual"),
        ("empty", lambda: ops.sliced_conv3x3(x[:0], w, b, 8, 8), "empty"),
        ("block width", lambda: ops.residual_block(x, w, b, w, b, 9, 1.0), "9"),
        ("block weight", lambda: ops.residual_block(x, w, b, w[:4], b[:4], 8, 1.0), "out_channels 8"),
        ("shuffle rows", lambda: ops.conv3x3_pixel_shuffle(x, wu, bu, 8, 8, 3), "out_channels 72"),
        ("shuffle factor", lambda: ops.conv3x3_pixel_shuffle(x, wu, bu, 8, 8, 0), "upscale_factor"),
    ]


@pytest.mark.parametrize("name,call,message", bad_calls(), ids=[c[0] for c in bad_calls()])
def test_bad_input_is_a_clear_error(name, call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_device_mismatch_is_a_clear_error(device):
    if device.type != "cuda":
        pytest.skip("needs a second device")
    x = torch.randn(1, 8, 5, 5, device=device)
    with pytest.raises(RuntimeError, match="weight is on cpu"):
        ops.sliced_conv3x3(x, torch.randn(8, 8, 3, 3), torch.randn(8, device=device), 8, 8)


def mixed_calls(x, w1, b1, w2, b2, up_w, up_b, res):
    """Each op's output for a low-precision input; parameters as given."""
    return [
        ops.sliced_conv3x3(x, w1, b1, 6, 5, relu=True),
        ops.sliced_conv3x3(x, w1, b1, 6, 5, residual=res, res_scale=0.3),
        ops.residual_block(x, w1, b1, w2, b2, 6, 0.5),
        ops.conv3x3_pixel_shuffle(x, up_w, up_b, 3, 5, 2),
    ]


def mixed_references(x, w1, b1, w2, b2, up_w, up_b, res):
    return [
        ops.sliced_conv3x3_reference(x, w1, b1, 6, 5, relu=True),
        ops.sliced_conv3x3_reference(x, w1, b1, 6, 5, residual=res, res_scale=0.3),
        ops.residual_block_reference(x, w1, b1, w2, b2, 6, 0.5),
        ops.conv3x3_pixel_shuffle_reference(x, up_w, up_b, 3, 5, 2),
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_master_weights_with_a_low_precision_input(dtype, device):
    """float32 parameters with a bf16/fp16 input (a mixed-precision model's master
    weights): the same output as weights cast to the input's dtype first, and gradients
    in float32, landing in the prefix."""
    x = torch.randn(2, 8, 5, 7, device=device).to(dtype).contiguous(memory_format=CL)
    res = torch.randn(2, 6, 5, 7, device=device).to(dtype).contiguous(memory_format=CL)
    params32 = [t.float().to(device) for t in (*params(8, 8), *params(8, 8), *params(16, 8))]
    leaves = [leaf(t) for t in params32]
    got = mixed_calls(x, *leaves, res)
    cast = [leaf(t.to(dtype)) for t in params32]
    want = mixed_calls(x, *cast, res)
    eps = torch.finfo(dtype).eps
    references = mixed_references(*(t.double() for t in (x, *cast, res)))
    for g, w, r in zip(got, want, references):
        assert g.dtype == dtype
        # against float64 of the same rounded weights: one rounding of the output, and
        # res_scale meeting the weight before its rounding to dtype rather than after
        scale = r.abs().max().item()
        torch.testing.assert_close(g.double(), r, rtol=2 * eps, atol=2 * eps * scale)
        torch.testing.assert_close(g.float(), w.float(), rtol=2 * eps, atol=2 * eps * scale)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # no scale: the very same
    grads = torch.autograd.grad(sum(g.float().sum() for g in got), leaves)
    want_grads = torch.autograd.grad(sum(w.float().sum() for w in want), cast)
    for g, w, p in zip(grads, want_grads, params32):
        assert g.dtype == torch.float32 and g.shape == p.shape
        torch.testing.assert_close(g, w.float(), rtol=2e-2, atol=2e-2 * w.float().abs().max().item())
    rows = grads[0].abs().sum(dim=(1, 2, 3))
    assert rows[6:].max() == 0 and rows[:6].min() > 0  # sliced_conv3x3 read rows [:6] only


def test_pixel_shuffle_phase_order_matches_pixel_shuffle(device):
    """The CUDA upsampler's shuffle: a conv output with channels in sub-pixel order
    (i, j, c), moved in one copy, is the pixel shuffle of the same output in PyTorch's
    order (c, i, j), whatever the conv output's layout."""
    for s, c, h, w in [(2, 3, 4, 5), (3, 2, 3, 7), (2, 1, 1, 1), (4, 2, 2, 3)]:
        natural = torch.randn(2, c * s * s, h, w, dtype=D, device=device)
        phase_order = natural.reshape(2, c, s * s, h, w).transpose(1, 2).reshape(2, -1, h, w)
        for conv in (phase_order, phase_order.contiguous(memory_format=CL)):
            got = torch.ops.csd_fast.pixel_shuffle_phase_order(conv, s)
            assert got.is_contiguous(memory_format=CL)
            torch.testing.assert_close(got, F.pixel_shuffle(natural, s), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="s\\*s\\*C"):
        torch.ops.csd_fast.pixel_shuffle_phase_order(torch.randn(1, 6, 2, 2), 2)


def test_weight_cache_is_off_by_default_and_sees_in_place_updates():
    w, b = (t.detach() for t in params(8, 8))
    x = torch.randn(1, 8, 6, 6, dtype=D)

    def run():
        return ops.sliced_conv3x3(x, w, b, 6, 5, residual=x[:, :6], res_scale=0.5)

    ops.clear_weight_cache()
    run()
    assert ops.weight_cache_stats() == {"hits": 0, "misses": 0, "entries": 0}
    with ops.cached_weights():
        first = run()
        torch.testing.assert_close(run(), first, rtol=0, atol=0)
        stats = ops.weight_cache_stats()
        assert stats["hits"] == 2 and stats["misses"] == 2 and stats["entries"] == 2, stats
        with torch.no_grad():
            w.mul_(2)  # an in-place update that autograd sees: repacked
            b.mul_(2)
        doubled = run()
        torch.testing.assert_close(doubled - x[:, :6], 2 * (first - x[:, :6]))
        assert ops.weight_cache_stats()["misses"] == 4
        # a new width is a new entry; a dead source's entry is never served again
        ops.sliced_conv3x3(x, w, b, 4, 4)
        assert ops.weight_cache_stats()["entries"] == 4
    assert ops.weight_cache_stats()["entries"] == 0  # leaving the block drops everything
    # outside the block a change through .data is seen at once (nothing is cached)
    w.data.mul_(0.5)
    b.data.mul_(0.5)
    torch.testing.assert_close(run(), first)


def test_weight_cache_never_serves_a_dead_tensor_s_pack():
    """Short-lived weights (a scaled tail, an autocast cast) die between calls, and the
    allocator hands their memory to the next ones: a cache keyed by address alone would
    serve the dead tensor's pack."""
    x = torch.randn(1, 4, 5, 5, dtype=D)
    with ops.cached_weights():
        first = ops.sliced_conv3x3(x, torch.ones(4, 4, 3, 3, dtype=D), torch.ones(4, dtype=D), 4, 4)
        for scale in range(2, 22):
            w = torch.full((4, 4, 3, 3), float(scale), dtype=D)
            b = torch.full((4,), float(scale), dtype=D)
            torch.testing.assert_close(ops.sliced_conv3x3(x, w, b, 4, 4), scale * first)
            del w, b
