"""csd_fast::contrastive_distance against the reference formula written out in full.

The oracle materialises every (anchor, negative) pair in float64, as the CSD reference
code does, which the op must never do."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from csd_fast.ops import contrastive_distance, contrastive_distance_reference

from _loss_helpers import features, source_for


def oracle(anchor, positive, negatives, source=None):
    a, p, n = (t.double() for t in (anchor, positive, negatives))
    d_pos = (p - a).abs().mean()
    pairs = (n.unsqueeze(0) - a.unsqueeze(1)).abs().flatten(2).sum(2)  # (B, K)
    if source is not None:
        keep = source.view(1, -1) != torch.arange(a.size(0), device=a.device).view(-1, 1)
        pairs = pairs * keep
    return d_pos, pairs.sum() / a.numel()


TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,count", [((1, 3, 1, 1), 1), ((2, 5, 7, 7), 3), ((3, 8, 33, 9), 4),
                                          ((4, 64, 12, 10), 10)])
@pytest.mark.parametrize("exclude", [False, True])
def test_forward_matches_oracle(device, dtype, shape, count, exclude):
    a = features(shape, dtype, device)
    p = features(shape, dtype, device)
    n = features((count,) + shape[1:], dtype, device)
    src = source_for(shape[0], count, device) if exclude else None
    got = contrastive_distance(a, p, n, src)
    want = oracle(a, p, n, src)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.dim() == 0
        torch.testing.assert_close(g.double(), w, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("layouts", [("channels_last",) * 3, ("strided",) * 3,
                                     ("channels_last", "contiguous", "strided"),
                                     ("contiguous", "channels_last", "channels_last")])
def test_layouts_and_gradients(device, layouts):
    shape, count = (3, 6, 9, 11), 4
    a = features(shape, torch.float64, device, layouts[0]).requires_grad_()
    p = features(shape, torch.float64, device, layouts[1]).requires_grad_()
    n = features((count,) + shape[1:], torch.float64, device, layouts[2]).requires_grad_()
    src = source_for(3, count, device)
    g_pos, g_neg = torch.rand(2, dtype=torch.float64) + 0.5
    d_pos, d_neg = contrastive_distance(a, p, n, src)
    grads = torch.autograd.grad(g_pos * d_pos + g_neg * d_neg, (a, p, n))
    r_pos, r_neg = oracle(a, p, n, src)
    want = torch.autograd.grad(g_pos * r_pos + g_neg * r_neg, (a, p, n))
    torch.testing.assert_close(d_pos, r_pos)
    torch.testing.assert_close(d_neg, r_neg)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("count", [3, 12, 13])
@pytest.mark.parametrize("case", ["packed", "odd_elements", "misaligned", "many_anchors"])
def test_every_kernel_path(device, count, case):
    """The CUDA op has a register fast path (K <= 12, elements divisible by 4, 16-byte
    aligned) and a general path; both must compute the same function."""
    batch, shape = (12, (4, 6, 10)) if case == "many_anchors" else (3, (5, 8, 12))
    if case == "odd_elements":
        shape = (5, 7, 9)
    a = features((batch,) + shape, torch.float32, device)
    if case == "misaligned":  # storage offset of one element breaks 16-byte alignment
        a = torch.randn(a.numel() + 1, device=device)[1:].view(a.shape)
    a.requires_grad_()
    p = features((batch,) + shape, torch.float32, device).requires_grad_()
    n = features((count,) + shape, torch.float32, device)
    src = source_for(batch, count, device)
    d_pos, d_neg = contrastive_distance(a, p, n, src)
    grads = torch.autograd.grad(d_pos + 3 * d_neg, (a, p))
    r_pos, r_neg = oracle(a, p, n, src)
    want = torch.autograd.grad(r_pos + 3 * r_neg, (a, p))
    torch.testing.assert_close(d_pos.double(), r_pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_neg.double(), r_neg, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_low_precision(device, dtype):
    shape = (2, 16, 8, 8)
    a = features(shape, dtype, device).requires_grad_()
    p, n = features(shape, dtype, device), features((3,) + shape[1:], dtype, device)
    d_pos, d_neg = contrastive_distance(a, p, n)
    (grad,) = torch.autograd.grad(d_pos + 2 * d_neg, a)
    r_pos, r_neg = oracle(a, p, n)
    (want,) = torch.autograd.grad(r_pos + 2 * r_neg, a)
    assert grad.dtype == dtype
    want = want.double()
    torch.testing.assert_close(grad.double(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_detached_positive_gets_no_gradient(device):
    a = features((2, 4, 5, 5), torch.float64, device).requires_grad_()
    p = features((2, 4, 5, 5), torch.float64, device)
    n = features((3, 4, 5, 5), torch.float64, device)
    d_pos, d_neg = contrastive_distance(a, p, n)
    (d_pos / d_neg).backward()
    assert p.grad is None and n.grad is None
    assert a.grad is not None and a.grad.abs().sum() > 0


@pytest.mark.parametrize("exclude", [False, True])
def test_gradcheck(device, exclude):
    def make(shape):
        return torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)

    a, p, n = make((3, 2, 3, 5)), make((3, 2, 3, 5)), make((2, 2, 3, 5))
    src = torch.tensor([2, 0], device=device) if exclude else None
    assert torch.autograd.gradcheck(lambda a, p, n: contrastive_distance(a, p, n, src), (a, p, n))


@pytest.mark.parametrize("exclude", [False, True])
def test_opcheck(device, exclude):
    a = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    p = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    n = torch.randn(3, 3, 4, 5, device=device)
    src = torch.tensor([1, -1, 0], device=device) if exclude else None
    torch.library.opcheck(torch.ops.csd_fast.contrastive_distance.default, (a, p, n, src))
    cl = [t.detach().contiguous(memory_format=torch.channels_last) for t in (a, p, n)]
    torch.library.opcheck(torch.ops.csd_fast.contrastive_distance.default, (*cl, src))


def test_plain_pytorch_path_matches_oracle(device):
    a = torch.randn(4, 6, 7, 5, dtype=torch.float64, device=device, requires_grad=True)
    p = torch.randn(4, 6, 7, 5, dtype=torch.float64, device=device)
    n = torch.randn(3, 6, 7, 5, dtype=torch.float64, device=device)
    src = torch.tensor([3, -1, 1], device=device)
    got = contrastive_distance_reference(a, p, n, src)
    want = oracle(a, p, n, src)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    (g,) = torch.autograd.grad(got[0] + got[1], a)
    (w,) = torch.autograd.grad(want[0] + want[1], a)
    torch.testing.assert_close(g, w)


def test_torch_compile_without_graph_breaks(device):
    def loss(a, p, n):
        d_pos, d_neg = contrastive_distance(a, p, n)
        return d_pos / (d_neg + 1e-7)

    a = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    p, n = torch.randn(2, 4, 6, 6, device=device), torch.randn(3, 4, 6, 6, device=device)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(a, p, n)
    (grad,) = torch.autograd.grad(got, a)
    want = loss(a, p, n)
    (want_grad,) = torch.autograd.grad(want, a)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 5), count=st.integers(1, 6), channels=st.integers(1, 9),
       height=st.integers(1, 13), width=st.integers(1, 13), exclude=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_shapes(batch, count, channels, height, width, exclude, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    p = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    n = torch.randn(count, channels, height, width, generator=gen, dtype=torch.float64)
    src = torch.randint(-1, batch, (count,), generator=gen) if exclude else None
    for g, w in zip(contrastive_distance(a, p, n, src), oracle(a, p, n, src)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("case,message", [
    (lambda a, p, n, s: (a[0], p[0], n, s), "anchor must be 4-D"),
    (lambda a, p, n, s: (a, p[:, :2], n, s), "positive must have the anchor's shape"),
    (lambda a, p, n, s: (a, p, n[:0], s), "K >= 1"),
    (lambda a, p, n, s: (a, p, n[:, :, :2], s), "negatives must be (K, C, H, W)"),
    (lambda a, p, n, s: (a, p.double(), n, s), "share one dtype"),
    (lambda a, p, n, s: (a.int(), p.int(), n.int(), s), "floating-point"),
    (lambda a, p, n, s: (a[:, :0], p[:, :0], n[:, :0], s), "anchor is empty"),
    (lambda a, p, n, s: (a, p, n, s.int()), "negative_source must be int64"),
    (lambda a, p, n, s: (a, p, n, s[:1]), "one entry per negative"),
])
def test_bad_input_is_a_clear_error(case, message):
    a, p, n = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4)
    src = torch.tensor([0, 1, -1])
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        contrastive_distance(*case(a, p, n, src))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch_is_a_clear_error():
    a, p = torch.randn(2, 3, 4, 4, device="cuda"), torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="one"):
        contrastive_distance(a, p, torch.randn(3, 3, 4, 4, device="cuda"))
