"""CUDA sliced-conv ops: the fused cuDNN graphs (bf16/fp16: conv -> bias -> ReLU,
conv -> residual -> bias, the upsampler's packed conv and its one shuffle copy, the
block's dgrad with its ReLU mask) and ATen's cuDNN convolution (fp32, fp64, the fallbacks), against the
plain-PyTorch references run in float64.

Every tensor is random (normal), weights are full-size layers of which the op must read
only the prefix, and inputs come NCHW, channels-last, channels-last with spare channels
beyond in_channels, and non-contiguous. Numbers are checked first; then the graph
counters (csd_fast.ops.cudnn_graph_stats) tell which path ran, so a silent fallback to
ATen fails the path tests. Skipped without a GPU and the CUDA kernels."""
import pytest
import torch
import torch.nn.functional as F

import csd_fast
from csd_fast import EDSRCSD
from csd_fast.ops import (conv3x3_pixel_shuffle, conv3x3_pixel_shuffle_reference, residual_block,
                          residual_block_reference, sliced_conv3x3, sliced_conv3x3_reference)
from csd_fast.ops._layout import caller_format

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and CUDA kernels")]

LOW = [torch.bfloat16, torch.float16]
# Unit roundoff (half an ulp at 1) of each dtype. Low-precision results may be off by 4:
# the graph rounds once from fp32, res_scale folded into the weight rounds it once, and
# residual_block's hidden is rounded once more before conv2.
# fp32/fp64 (cuDNN, TF32 off) get 1024 for summation order over up to 2304 products.
EPS = {dt: torch.finfo(dt).eps / 2 for dt in (torch.bfloat16, torch.float16, torch.float32,
                                              torch.float64)}
WIDE_UNITS = 1024
LAYOUTS = ["contiguous", "channels_last", "strided", "channels_last+8", "channels_last+4"]
SHAPES = [(1, 1, 1), (3, 7, 33), (1, 33, 7)]  # (N, H, W): odd sizes, partial tiles


def make_input(n, channels, h, w, dtype, layout):
    """(n, channels[+extra], h, w) normal values in the requested layout. "+k" layouts
    carry k spare channels that the op must skip (+8 keeps 16-byte pixel alignment,
    +4 does not); "strided" is every other column of a wider map."""
    extra = int(layout.split("+")[1]) if "+" in layout else 0
    if layout == "strided":
        return torch.randn(n, channels, h, 2 * w, device="cuda").to(dtype)[..., ::2]
    x = torch.randn(n, channels + extra, h, w, device="cuda").to(dtype)
    if layout.startswith("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_layer(rows, cols, dtype):
    """A full-size conv layer with unit-variance outputs for any fan-in, and a bias of
    the same size so that a dropped or misplaced bias shows."""
    weight = torch.randn(rows, cols, 3, 3, device="cuda") / (9 * cols) ** 0.5
    return weight.to(dtype), torch.randn(rows, device="cuda").to(dtype)


def as64(*tensors):
    return [None if t is None else t.double() for t in tensors]


def assert_close(got, want, dtype, units=4):
    """|got - want| <= units * EPS * (|want| + std(want)): relative to each value, with a
    floor at the typical magnitude for values near zero."""
    assert got.dtype == dtype, (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = units * EPS[dtype]
    scale = want.abs() + want.std(unbiased=False).clamp_min(1e-30)
    err = (got.double() - want).abs()
    worst = (err / scale).max().item()
    assert worst <= tol, f"max error {worst:.3g} of scale exceeds {tol:.3g} ({units} unit roundoffs of {dtype})"


def graph_counts() -> dict:
    return csd_fast.ops.cudnn_graph_stats()


def counted(fn):
    """fn's result and how the graph counters moved while it ran."""
    before = graph_counts()
    out = fn()
    torch.cuda.synchronize()
    after = graph_counts()
    return out, {k: after[k] - before[k] for k in after}


# --------------------------------------------------------------------------- sliced_conv3x3

# (out_channels, in_channels, weight rows, weight input channels)
CONV_WIDTHS = {
    "w16of64": (16, 16, 64, 64),
    "w32of64": (32, 32, 64, 64),
    "w64of64": (64, 64, 64, 64),
    "w256of256": (256, 256, 256, 256),
    "tail3of64": (3, 64, 3, 256),  # EDSR's tail: 3 outputs, a bias too short to align
    "o40i24of64": (40, 24, 64, 64),
}


def run_sliced_conv(shape, widths, dtype, layout, epilogue, res_scale=0.37):
    n, h, w = shape
    out_c, in_c, rows, cols = widths
    x = make_input(n, in_c, h, w, dtype, layout)
    weight, bias = make_layer(rows, cols, dtype)
    residual = None
    if epilogue == "residual":  # in the input's layout; a channel-sliced view for "+k"
        residual = make_input(n, out_c, h, w, dtype, layout)[:, :out_c]
    relu = epilogue == "relu"
    got = sliced_conv3x3(x, weight, bias, out_c, in_c, relu=relu, residual=residual,
                         res_scale=res_scale)
    want = sliced_conv3x3_reference(*as64(x, weight, bias), out_c, in_c, relu=relu,
                                    residual=as64(residual)[0], res_scale=res_scale)
    return x, got, want


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("width", list(CONV_WIDTHS))
@pytest.mark.parametrize("epilogue", ["none", "relu", "residual"])
@pytest.mark.parametrize("dtype", LOW)
def test_sliced_conv3x3_matches_reference(dtype, epilogue, width, shape, layout):
    x, got, want = run_sliced_conv(shape, CONV_WIDTHS[width], dtype, layout, epilogue)
    assert_close(got, want, dtype)
    assert got.is_contiguous(memory_format=caller_format(x))


def test_relu_keeps_nan_and_zeroes_negatives():
    """torch.relu semantics in the epilogue: NaN stays NaN, negatives become exactly 0."""
    x = torch.randn(1, 16, 5, 5, device="cuda").bfloat16().contiguous(memory_format=torch.channels_last)
    x[0, 3, 2, 2] = float("nan")
    weight, bias = make_layer(16, 16, torch.bfloat16)
    got = sliced_conv3x3(x, weight, bias, 16, 16, relu=True)
    want = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert (got[~got.isnan()] >= 0).all() and (got == 0).any()


# --------------------------------------------------------------------------- residual_block

BLOCK_WIDTHS = {"w16of64": (16, 64), "w32of64": (32, 64), "w64of64": (64, 64),
                "w256of256": (256, 256)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("width", list(BLOCK_WIDTHS))
@pytest.mark.parametrize("res_scale", [1.0, 0.1])
@pytest.mark.parametrize("dtype", LOW)
def test_residual_block_matches_reference(dtype, res_scale, width, shape, layout):
    (n, h, w), (c, full) = shape, BLOCK_WIDTHS[width]
    x = make_input(n, c, h, w, dtype, layout)
    w1, b1 = make_layer(full, full, dtype)
    w2, b2 = make_layer(full, full, dtype)
    out, hidden = torch.ops.csd_fast.residual_block.default(x, w1, b1, w2, b2, c, res_scale)
    x64, w1d, b1d, w2d, b2d = as64(x, w1, b1, w2, b2)
    want_hidden = F.relu(F.conv2d(x64[:, :c], w1d[:c, :c], b1d[:c], padding=1))
    want = residual_block_reference(x64, w1d, b1d, w2d, b2d, c, res_scale)
    assert_close(hidden, want_hidden, dtype)
    assert_close(out, want, dtype)
    assert torch.equal(residual_block(x, w1, b1, w2, b2, c, res_scale), out)
    assert out.is_contiguous(memory_format=caller_format(x))
    assert hidden.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- pixel shuffle

# (channels, in_channels, weight rows, weight input channels, upscale)
SHUFFLE_WIDTHS = {
    "x2w16of64": (16, 16, 4 * 64, 64, 2),
    "x2w32of64": (32, 32, 4 * 64, 64, 2),
    "x2w64of64": (64, 64, 4 * 64, 64, 2),
    "x2w256of256": (256, 256, 4 * 256, 256, 2),
    "x3w16of64": (16, 16, 9 * 64, 64, 3),
    "x2c3": (3, 16, 12, 16, 2),  # odd channel count: 12 packed rows, unaligned runs of 6
    "x3c5": (5, 24, 9 * 8, 32, 3),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("width", list(SHUFFLE_WIDTHS))
@pytest.mark.parametrize("dtype", LOW)
def test_conv3x3_pixel_shuffle_matches_reference(dtype, width, shape, layout):
    (n, h, w), (c, in_c, rows, cols, s) = shape, SHUFFLE_WIDTHS[width]
    x = make_input(n, in_c, h, w, dtype, layout)
    weight, bias = make_layer(rows, cols, dtype)
    got = conv3x3_pixel_shuffle(x, weight, bias, c, in_c, s)
    want = conv3x3_pixel_shuffle_reference(*as64(x, weight, bias), c, in_c, s)
    assert got.shape == (n, c, h * s, w * s)
    assert_close(got, want, dtype)
    assert got.is_contiguous(memory_format=caller_format(x))


# --------------------------------------------------------------------------- which path ran


def conv_call(op, dtype, in_c=64, layout="channels_last"):
    """A call of `op` at width 64 (or in_c input channels) with its float64 reference."""
    x = make_input(2, in_c, 9, 11, dtype, layout)
    if op == "sliced_conv3x3":
        weight, bias = make_layer(64, in_c, dtype)
        res = torch.randn(2, 64, 9, 11, device="cuda").to(dtype)
        return (lambda: sliced_conv3x3(x, weight, bias, 64, in_c, residual=res, res_scale=0.5),
                lambda: sliced_conv3x3_reference(*as64(x, weight, bias), 64, in_c,
                                                 residual=res.double(), res_scale=0.5))
    if op == "residual_block":
        w1, b1 = make_layer(in_c, in_c, dtype)
        w2, b2 = make_layer(in_c, in_c, dtype)
        return (lambda: residual_block(x, w1, b1, w2, b2, in_c, 0.1),
                lambda: residual_block_reference(*as64(x, w1, b1, w2, b2), in_c, 0.1))
    weight, bias = make_layer(4 * 16, in_c, dtype)
    return (lambda: conv3x3_pixel_shuffle(x, weight, bias, 16, in_c, 2),
            lambda: conv3x3_pixel_shuffle_reference(*as64(x, weight, bias), 16, in_c, 2))


OPS = ["sliced_conv3x3", "residual_block", "conv3x3_pixel_shuffle"]
# graphs one call runs: one conv; the block's two convs; the upsampler's packed conv
GRAPHS_PER_CALL = {"sliced_conv3x3": 1, "residual_block": 2, "conv3x3_pixel_shuffle": 1}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_runs_fused_graphs(op, dtype):
    fused, reference = conv_call(op, dtype)
    fused()  # the first call builds the plans
    got, moved = counted(fused)
    assert_close(got, reference(), dtype)
    assert moved["fallbacks"] == 0 and moved["runs"] == GRAPHS_PER_CALL[op], moved
    assert moved["built"] == 0, f"the plan cache missed on a repeated call: {moved}"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["float32", "float64", "switched_off", "in_channels_3"])
def test_other_paths_match_reference(op, case, monkeypatch):
    """fp32/fp64 and CSD_FAST_CUDNN_GRAPH=0 take ATen's cuDNN convolution; EDSR's
    3-channel head runs the graph or falls back per call; all match the reference."""
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(case, torch.bfloat16)
    in_c = 3 if case == "in_channels_3" else 64
    if op == "residual_block" and in_c == 3:
        in_c = 4  # a block maps channels to channels
    if case == "switched_off":
        monkeypatch.setenv("CSD_FAST_CUDNN_GRAPH", "0")
    fused, reference = conv_call(op, dtype, in_c=in_c)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got, moved = counted(fused)
    assert_close(got, reference(), dtype, units=4 if dtype in LOW else WIDE_UNITS)
    if case != "in_channels_3":
        assert moved["runs"] == 0 and moved["fallbacks"] == 0, moved


def test_graph_and_aten_paths_agree(monkeypatch):
    """The same bf16 call through the graphs and through ATen: within bf16 rounding."""
    for op in OPS:
        fused, reference = conv_call(op, torch.bfloat16)
        graph = fused()
        monkeypatch.setenv("CSD_FAST_CUDNN_GRAPH", "0")
        aten = fused()
        monkeypatch.delenv("CSD_FAST_CUDNN_GRAPH")
        want = reference()
        assert_close(graph, want, torch.bfloat16)
        assert_close(aten, want, torch.bfloat16)


def test_upsampler_runs_one_packed_graph():
    """The upsampler is one conv over all s*s*C packed rows (no per-phase convs, no
    staging workspace) and one copy into the shuffled layout."""
    x = make_input(1, 64, 6, 10, torch.bfloat16, "channels_last")
    weight, bias = make_layer(4 * 64, 64, torch.bfloat16)
    got, moved = counted(lambda: conv3x3_pixel_shuffle(x, weight, bias, 64, 64, 2))
    want = conv3x3_pixel_shuffle_reference(*as64(x, weight, bias), 64, 64, 2)
    assert_close(got, want, torch.bfloat16)
    assert moved["runs"] == 1 and moved["fallbacks"] == 0, moved


def test_residual_block_backward_fuses_the_relu_mask():
    """bf16 backward of a block: conv2's dgrad with hidden's ReLU mask runs as one graph,
    built once (its engine compiled at run time) and then reused; gradients match."""
    fused, ref, leaves, used = grad_case("residual_block", torch.bfloat16, "channels_last")
    for _ in range(2):
        out = fused(leaves)
        upstream = torch.randn_like(out)
        before = graph_counts()
        got = torch.autograd.grad(out, [leaves[i] for i in used], upstream)
        torch.cuda.synchronize()
        moved = {k: graph_counts()[k] - before[k] for k in before}
    assert moved["runs"] == 2 and moved["fallbacks"] == 0 and moved["built"] == 0, moved
    assert graph_counts()["runtime_compiled"] >= 1
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(ref(leaves64), [leaves64[i] for i in used], upstream.double())
    for g, w in zip(got, want):
        assert_close(g, w, torch.bfloat16, units=8)


def test_autotune_with_cudnn_benchmark():
    """torch.backends.cudnn.benchmark: a new key builds every candidate plan and times
    them on its first call; the result is still right and later calls reuse the plan."""
    x = make_input(2, 48, 13, 17, torch.bfloat16, "channels_last")
    weight, bias = make_layer(48, 48, torch.bfloat16)
    want = sliced_conv3x3_reference(*as64(x, weight, bias), 48, 48, relu=True)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        first, moved = counted(lambda: sliced_conv3x3(x, weight, bias, 48, 48, relu=True))
        again, moved_again = counted(lambda: sliced_conv3x3(x, weight, bias, 48, 48, relu=True))
    assert moved["built"] == 1 and moved["runs"] == 1, moved
    assert moved_again["built"] == 0 and moved_again["runs"] == 1, moved_again
    assert_close(first, want, torch.bfloat16)
    assert torch.equal(first, again)


def test_plan_cache_is_bounded():
    """An evaluation over many image sizes cannot grow the plan cache without limit."""
    weight, bias = make_layer(8, 8, torch.bfloat16)
    for width in range(1, 300):
        x = make_input(1, 8, 3, width, torch.bfloat16, "channels_last")
        sliced_conv3x3(x, weight, bias, 8, 8)
    assert torch.ops.csd_fast.cudnn_plan_cache_size() <= 256


# --------------------------------------------------------------------------- opcheck, grads


def opcheck_cases(dtype):
    x = make_input(2, 16, 7, 9, dtype, "channels_last").requires_grad_()
    xn = make_input(1, 24, 5, 6, dtype, "contiguous").requires_grad_()
    w, b = (t.requires_grad_() for t in make_layer(32, 32, dtype))
    res = torch.randn(2, 16, 7, 9, device="cuda").to(dtype).requires_grad_()
    ops = torch.ops.csd_fast
    return [
        (ops.sliced_conv3x3.default, (x, w, b, 16, 16, True, None, 1.0)),
        (ops.sliced_conv3x3.default, (x, w, b, 16, 16, False, res, 0.25)),
        (ops.residual_block.default, (x, w, b, w, b, 16, 0.1)),
        (ops.conv3x3_pixel_shuffle.default, (xn, w, b, 8, 16, 2)),
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck(dtype):
    for op, args in opcheck_cases(dtype):
        torch.library.opcheck(op, args)


def grad_case(op, dtype, layout):
    """(fused op, reference op, all six tensors, indices of those the op takes); both
    ops take the list of all six."""
    x = make_input(2, 32, 7, 9, dtype, layout)
    w1, b1 = make_layer(64, 64, dtype)
    w2, b2 = make_layer(64, 64, dtype)
    res = torch.randn(2, 32, 7, 9, device="cuda").to(dtype)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2, res)]
    if op == "sliced_conv3x3_relu":
        fused = lambda t: sliced_conv3x3(t[0], t[1], t[2], 32, 32, relu=True)
        ref = lambda t: sliced_conv3x3_reference(t[0], t[1], t[2], 32, 32, relu=True)
        used = [0, 1, 2]
    elif op == "sliced_conv3x3_residual":
        fused = lambda t: sliced_conv3x3(t[0], t[1], t[2], 32, 32, residual=t[5], res_scale=0.3)
        ref = lambda t: sliced_conv3x3_reference(t[0], t[1], t[2], 32, 32, residual=t[5],
                                                 res_scale=0.3)
        used = [0, 1, 2, 5]
    elif op == "residual_block":
        fused = lambda t: residual_block(t[0], t[1], t[2], t[3], t[4], 32, 0.1)
        ref = lambda t: residual_block_reference(t[0], t[1], t[2], t[3], t[4], 32, 0.1)
        used = [0, 1, 2, 3, 4]
    else:
        fused = lambda t: conv3x3_pixel_shuffle(t[0], t[1], t[2], 8, 32, 2)
        ref = lambda t: conv3x3_pixel_shuffle_reference(t[0], t[1], t[2], 8, 32, 2)
        used = [0, 1, 2]
    return fused, ref, leaves, used


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["sliced_conv3x3_relu", "sliced_conv3x3_residual",
                                "residual_block", "conv3x3_pixel_shuffle"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gradients_match_reference(dtype, op, layout):
    """Backward runs the cuDNN compositions (TF32 off: a TF32 forward could flip ReLU
    masks against the float64 reference)."""
    fused, ref, leaves, used = grad_case(op, dtype, layout)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out = fused(leaves)
        upstream = torch.randn_like(out)
        got = torch.autograd.grad(out, [leaves[i] for i in used], upstream)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(ref(leaves64), [leaves64[i] for i in used], upstream.double())
    assert len(got) == len(used) >= 3
    for g, w in zip(got, want):
        assert_close(g, w, dtype, units=8 if dtype in LOW else WIDE_UNITS)


# --------------------------------------------------------------------------- sanitizer set


@pytest.mark.parametrize("case", [
    ("sliced_conv3x3", (3, 64, 3, 64), "none"),       # the tail: unaligned bias, fallback
    ("sliced_conv3x3", (32, 16, 64, 64), "relu"),
    ("sliced_conv3x3", (64, 64, 64, 64), "residual"),
    ("residual_block", (16, 64), None),
    ("conv3x3_pixel_shuffle", (16, 16, 64, 16, 2), None),  # packed conv, one shuffle copy
    ("conv3x3_pixel_shuffle", (3, 16, 27, 16, 3), None),   # 27 rows: the graph or ATen
    ("fallback_fp32", (16, 16, 16, 16), "relu"),
], ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}")
def test_sanitizer_set(case):
    """One small call per path (5x13 pixels, backward included), the set
    benchmarks/gpu_session.sh runs under compute-sanitizer memcheck: a wrong stride or
    offset in a graph's tensors writes outside its buffer. References run on the CPU."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got, want, dtype = run_config_case(*case)
    assert_close(got.cpu(), want, dtype, units=4 if dtype in LOW else WIDE_UNITS)


def run_config_case(op, sizes, epilogue):
    dtype = torch.float32 if op == "fallback_fp32" else torch.bfloat16
    x = make_input(1, 64, 5, 13, dtype, "channels_last").requires_grad_()
    if op in ("sliced_conv3x3", "fallback_fp32"):
        out_c, in_c, rows, cols = sizes
        weight, bias = make_layer(rows, cols, dtype)
        res = torch.randn(1, out_c, 5, 13, device="cuda").to(dtype) if epilogue == "residual" else None
        got = sliced_conv3x3(x, weight, bias, out_c, in_c, relu=epilogue == "relu", residual=res,
                             res_scale=0.5)
        want = sliced_conv3x3_reference(*as64(x.detach().cpu(), weight.cpu(), bias.cpu()), out_c,
                                        in_c, relu=epilogue == "relu",
                                        residual=None if res is None else res.cpu().double(),
                                        res_scale=0.5)
    elif op == "residual_block":
        c, full = sizes
        w1, b1 = make_layer(full, full, dtype)
        w2, b2 = make_layer(full, full, dtype)
        got = residual_block(x, w1, b1, w2, b2, c, 0.1)
        want = residual_block_reference(*as64(*(t.detach().cpu() for t in (x, w1, b1, w2, b2))),
                                        c, 0.1)
    else:
        c, in_c, rows, cols, s = sizes
        weight, bias = make_layer(rows, cols, dtype)
        got = conv3x3_pixel_shuffle(x, weight, bias, c, in_c, s)
        want = conv3x3_pixel_shuffle_reference(*as64(x.detach().cpu(), weight.cpu(), bias.cpu()),
                                               c, in_c, s)
    got.backward(torch.randn_like(got))
    torch.cuda.synchronize()
    return got.detach(), want, dtype


# --------------------------------------------------------------------------- errors, model


def test_errors_match_the_composite():
    """The CUDA kernels reject what the composites reject, with the same messages."""
    x = make_input(1, 16, 4, 4, torch.bfloat16, "channels_last")
    weight, bias = make_layer(16, 16, torch.bfloat16)
    with pytest.raises(RuntimeError, match="relu and residual cannot be combined"):
        sliced_conv3x3(x, weight, bias, 16, 16, relu=True, residual=torch.randn_like(x))
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        sliced_conv3x3(x, weight, bias, 16, 16, residual=x[:, :8])
    with pytest.raises(RuntimeError, match="residual must be"):
        sliced_conv3x3(x, weight, bias, 16, 16, residual=torch.randn(1, 16, 4, 4, device="cuda"))
    with pytest.raises(RuntimeError, match="out_channels 32 is outside"):
        sliced_conv3x3(x, weight, bias, 32, 16)
    with pytest.raises(RuntimeError, match="weight dtype"):
        residual_block(x, weight.half(), bias.half(), weight, bias, 16)
    with pytest.raises(RuntimeError, match="channels \\* s \\* s|outside the weight"):
        conv3x3_pixel_shuffle(x, weight, bias, 8, 16, 2)


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_edsr_fused_bf16_as_accurate_as_reference(width):
    """A small EDSR x4 in bf16 channels-last: the fused backend's error against the
    float64 network is no worse than the reference backend's own bf16 error (x1.5)."""
    torch.manual_seed(0)
    model = EDSRCSD(scale=4, n_resblocks=4, n_feats=64, res_scale=0.1, backend="reference")
    model = model.cuda().eval()
    x = (torch.rand(2, 3, 23, 17, device="cuda") * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model.double()(x.double(), width)
        model.bfloat16()
        xb = x.bfloat16()
        errors = {}
        for backend in ("reference", "fused"):
            model.backend = backend
            out = model(xb, width)
            assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
            errors[backend] = (out.double() - want).abs().max().item()
    assert errors["fused"] <= 1.5 * errors["reference"] + 1e-3 * want.abs().max().item(), errors
