"""The CUDA conv ops where cuDNN cannot, or must not, run a graph: every such call runs
ATen's convolution and returns the right numbers, a built plan that fails says so once
and is never tried again, nothing is planned inside a CUDA-graph capture, and a plan a
capture recorded outlives the plan cache's eviction.

Faults are injected with CSD_FAST_CUDNN_FAULT (build, workspace, autotune, execute),
since cuDNN itself does not fail on demand. Every call uses a shape no other test uses,
so the plan is built (and fails) inside the test. Skipped without a GPU and the CUDA
kernels."""
import contextlib
import warnings

import pytest
import torch

import csd_fast
from csd_fast import EDSRCSD, ops
from csd_fast.ops import (residual_block, residual_block_reference, sliced_conv3x3,
                          sliced_conv3x3_reference)

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and CUDA kernels")]

EPS = {torch.bfloat16: 2**-8, torch.float16: 2**-11}


def nhwc(n, c, h, w, dtype):
    return torch.randn(n, c, h, w, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)


def layer(rows, cols, dtype):
    weight = torch.randn(rows, cols, 3, 3, device="cuda") / (9 * cols) ** 0.5
    return weight.to(dtype), torch.randn(rows, device="cuda").to(dtype)


def as64(*tensors):
    return [t.double() for t in tensors]


def assert_close(got, want, dtype, units=4):
    scale = want.abs() + want.std(unbiased=False)
    worst = ((got.double() - want).abs() / scale).max().item()
    assert worst <= units * EPS[dtype], f"error {worst:.3g} over {units} unit roundoffs of {dtype}"


def counted(fn):
    """fn's result, how the graph counters moved and the warnings it raised."""
    before = ops.cudnn_graph_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
        torch.cuda.synchronize()
    after = ops.cudnn_graph_stats()
    return out, {k: after[k] - before[k] for k in after}, [str(w.message) for w in caught]


@contextlib.contextmanager
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


FAULTS = ["build", "workspace", "autotune", "execute"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_plan_runs_aten_and_is_never_tried_again(fault, monkeypatch):
    dtype = torch.bfloat16
    x = nhwc(2, 24, 5 + FAULTS.index(fault), 13, dtype)
    weight, bias = layer(24, 24, dtype)
    want = sliced_conv3x3_reference(*as64(x, weight, bias), 24, 24, relu=True)
    monkeypatch.setenv("CSD_FAST_CUDNN_FAULT", fault)
    with torch.backends.cudnn.flags(enabled=True, benchmark=fault == "autotune"):
        call = lambda: sliced_conv3x3(x, weight, bias, 24, 24, relu=True)  # noqa: E731
        first, moved, said = counted(call)
        again, moved_again, said_again = counted(call)
    assert_close(first, want, dtype)
    assert_close(again, want, dtype)
    assert moved["runs"] == 0 and moved["fallbacks"] == 1, moved
    if fault == "build":  # no engine: an ordinary outcome, counted, not warned
        assert moved["rejected"] == 1 and moved["failed"] == 0 and not said, (moved, said)
    else:
        assert moved["built"] == 1 and moved["failed"] == 1, moved
        assert len(said) == 1 and "injected fault" in said[0] and "fprop bias+relu" in said[0], said
    assert moved_again["fallbacks"] == 1 and moved_again["built"] == 0, moved_again
    assert moved_again["failed"] == 0 and moved_again["rejected"] == 0 and not said_again


def test_no_plan_is_built_inside_a_capture():
    """A capture that meets a graph not yet planned stops with an error that says what
    to do; after one eager call the same capture records the plan and replays right."""
    dtype = torch.bfloat16
    x = nhwc(1, 32, 19, 3, dtype)
    weight, bias = layer(32, 32, dtype)
    want = sliced_conv3x3_reference(*as64(x, weight, bias), 32, 32)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="no cuDNN plan yet .* run the same forward"):
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            sliced_conv3x3(x, weight, bias, 32, 32)
    sliced_conv3x3(x, weight, bias, 32, 32)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = sliced_conv3x3(x, weight, bias, 32, 32)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, want, dtype)


def test_a_captured_plan_survives_eviction():
    """The plans a capture recorded stay in the cache however many others come after."""
    dtype = torch.bfloat16
    x = nhwc(1, 40, 23, 3, dtype)
    weight, bias = layer(40, 40, dtype)
    sliced_conv3x3(x, weight, bias, 40, 40)  # planned eagerly, then recorded
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = sliced_conv3x3(x, weight, bias, 40, 40)
    small, small_bias = layer(8, 8, dtype)
    for width in range(1, 300):  # more new keys than the cache holds
        sliced_conv3x3(nhwc(1, 8, 2, width, dtype), small, small_bias, 8, 8)
    graph.replay()
    _, moved, _ = counted(lambda: sliced_conv3x3(x, weight, bias, 40, 40))
    assert moved["built"] == 0 and moved["runs"] == 1, moved
    assert_close(out, sliced_conv3x3_reference(*as64(x, weight, bias), 40, 40), dtype)


def block_case(dtype, channels, h, w):
    x = nhwc(2, channels, h, w, dtype).requires_grad_()
    w1, b1 = (t.requires_grad_() for t in layer(channels, channels, dtype))
    w2, b2 = (t.requires_grad_() for t in layer(channels, channels, dtype))
    leaves = [x, w1, b1, w2, b2]
    upstream = torch.randn(2, channels, h, w, device="cuda").to(dtype)

    def grads():
        out = residual_block(x, w1, b1, w2, b2, channels, 0.1)
        return torch.autograd.grad(out, leaves, upstream)

    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(residual_block_reference(*leaves64, channels, 0.1), leaves64,
                               upstream.double())
    return grads, want


def test_runtime_compilation_off_takes_the_plain_dgrad(monkeypatch):
    """CSD_FAST_CUDNN_RUNTIME_COMPILE=0: the block's backward runs the precompiled plain
    dgrad and applies the ReLU mask apart; gradients as before."""
    monkeypatch.setenv("CSD_FAST_CUDNN_RUNTIME_COMPILE", "0")
    grads, want = block_case(torch.bfloat16, 48, 7, 9)
    got, moved, _ = counted(grads)
    assert moved["runtime_compiled"] == 0 and moved["rejected"] >= 1, moved
    for g, w in zip(got, want):
        assert_close(g, w, torch.bfloat16, units=8)


def test_fp16_fused_backward_matches_float64():
    grads, want = block_case(torch.float16, 32, 6, 11)
    got, moved, _ = counted(grads)
    assert moved["runs"] >= 2, moved  # the forward's two graphs at least
    for g, w in zip(got, want):
        assert_close(g, w, torch.float16, units=8)


def test_misaligned_input_runs_right():
    """An input whose first element is not 16-byte aligned (a view one element into
    its storage) is never handed to a fused engine."""
    dtype = torch.bfloat16
    n, c, h, w = 1, 16, 7, 5
    storage = torch.randn(n * h * w * c + 1, device="cuda").to(dtype)
    x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.data_ptr() % 16 and x.is_contiguous(memory_format=torch.channels_last)
    weight, bias = layer(16, 16, dtype)
    got, moved, _ = counted(lambda: sliced_conv3x3(x, weight, bias, 16, 16, relu=True))
    assert moved["fallbacks"] == 1 and moved["runs"] == 0, moved
    assert_close(got, sliced_conv3x3_reference(*as64(x, weight, bias), 16, 16, relu=True), dtype)


def test_deterministic_mode_repeats_bit_for_bit():
    """Under torch.use_deterministic_algorithms a training step's output and gradients
    come out the same on every run, through plans keyed apart from the default ones."""
    torch.manual_seed(0)
    net = EDSRCSD(scale=2, n_resblocks=2, n_feats=32, res_scale=0.1).cuda()
    x = (torch.rand(4, 3, 17, 19, device="cuda") * 255).contiguous(memory_format=torch.channels_last)

    def step():
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x, 0.5).float()
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in net.parameters() if p.grad is not None]

    with deterministic():
        first, moved, _ = counted(step)
        second = step()
    assert moved["built"] > 0, moved  # deterministic keys are new keys
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_odd_width_runs_aten_and_matches_the_reference_backend():
    """Width 0.3 of 64 features is 19 channels: every conv goes to ATen (said in the
    counters), and the fused model equals the reference backend's numbers."""
    torch.manual_seed(0)
    net = EDSRCSD(scale=2, n_resblocks=2, n_feats=64, res_scale=0.1).cuda().eval()
    x = (torch.rand(1, 3, 21, 18, device="cuda") * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got, moved, _ = counted(lambda: net(x, 0.3).float())
        net.backend = "reference"
        want = net(x, 0.3).float()
    assert moved["runs"] == 0 and moved["routed"] > 0, moved
    torch.testing.assert_close(got, want, rtol=0.05, atol=1.0)


def test_weight_cache_on_cuda_and_its_capture_bypass():
    """Inside cached_weights() a second eager forward packs nothing; a capture packs
    inside the graph and leaves the cache alone, so an in-place weight change shows in
    the next replay."""
    torch.manual_seed(0)
    net = EDSRCSD(scale=2, n_resblocks=2, n_feats=32, res_scale=0.1).cuda().eval()
    x = (torch.rand(1, 3, 16, 16, device="cuda") * 255).contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return net(x, 1.0).float()

    with torch.no_grad(), ops.cached_weights():
        eager = forward()
        before = ops.weight_cache_stats()
        forward()
        after = ops.weight_cache_stats()
        assert after["misses"] == before["misses"] and after["hits"] > before["hits"], (before, after)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = forward()
        assert ops.weight_cache_stats() == after  # bypassed while capturing
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        net.tail.bias.add_(1.0)
        graph.replay()
        torch.cuda.synchronize()
        assert not torch.equal(out, eager) and torch.equal(out, forward())
