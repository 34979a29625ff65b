"""The streamed contrastive loss: csd_fast::contrastive_negative_sums against the pairs written
out in float64, negative_distance's gradient, the loss against the reference formulation
for several K and chunk sizes, peak memory that does not grow with K, and a
negatives=dataset run with K = 256 that resumes exactly (its DDP equality is a stage of
tests/test_train_ddp.py)."""
import pytest
import torch

from csd_fast._memory import cpu_peak_bytes
from csd_fast.losses import ContrastiveLoss, load_vgg19
from csd_fast.losses.csd_loss import upsample_negatives
from csd_fast.ops import (contrastive_negative_sums, contrastive_negative_sums_reference,
                          negative_distance)
from csd_fast.train import load_config, train

from _loss_helpers import features, images, reference_contrastive, source_for
from _train_helpers import noise_folder

SUMS = {"fused": contrastive_negative_sums, "reference": contrastive_negative_sums_reference}


def oracle_sums(anchor, negatives, source=None):
    """Every (anchor, negative) pair materialised in float64: per-anchor distance sums and
    the sign sums, pairs with source[k] == b left out."""
    a, n = anchor.double(), negatives.double()
    diff = a.unsqueeze(1) - n.unsqueeze(0)  # (B, K, C, H, W)
    keep = torch.ones(a.size(0), n.size(0), dtype=torch.float64, device=a.device)
    if source is not None:
        keep = (source.view(1, -1) != torch.arange(a.size(0), device=a.device).view(-1, 1)).double()
    keep = keep.view(*keep.shape, 1, 1, 1)
    return (diff.abs() * keep).flatten(1).sum(1), (diff.sign() * keep).sum(1)


# --- the op ---------------------------------------------------------------------------------

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,count", [((1, 3, 1, 1), 1), ((2, 5, 7, 7), 3), ((3, 8, 33, 9), 4),
                                          ((4, 64, 12, 10), 13)])
@pytest.mark.parametrize("exclude", [False, True])
def test_sums_match_the_pairs_written_out(device, impl, dtype, shape, count, exclude):
    a = features(shape, dtype, device)
    n = features((count,) + shape[1:], dtype, device)
    src = source_for(shape[0], count, device) if exclude else None
    dist, signs = SUMS[impl](a, n, src)
    want_dist, want_signs = oracle_sums(a, n, src)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    assert dist.dtype == signs.dtype == accumulate
    assert dist.shape == (shape[0],) and signs.shape == shape
    # the inputs are exact in float64, so only the sums' rounding differs; sign sums are counts
    torch.testing.assert_close(dist.double(), want_dist, rtol=TOL[dtype], atol=0)
    assert torch.equal(signs.double(), want_signs)
    if exclude and shape[0] > 1:  # the mask left something out
        assert not torch.equal(dist.double(), oracle_sums(a, n)[0])


@pytest.mark.parametrize("layouts", [("channels_last", "channels_last"), ("strided", "strided"),
                                     ("channels_last", "contiguous"), ("contiguous", "channels_last")])
def test_layouts(device, layouts):
    a = features((3, 6, 9, 11), torch.float64, device, layouts[0])
    n = features((5, 6, 9, 11), torch.float64, device, layouts[1])
    src = source_for(3, 5, device)
    dist, signs = contrastive_negative_sums(a, n, src)
    want_dist, want_signs = oracle_sums(a, n, src)
    torch.testing.assert_close(dist, want_dist)
    assert torch.equal(signs, want_signs)
    # the sign sum comes in the anchor's layout (what the loss adds and multiplies it with)
    channels_last = layouts[0] == "channels_last"
    assert signs.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_chunks_add_up_to_all_negatives(device):
    a = features((3, 4, 6, 5), torch.float32, device)
    n = features((7, 4, 6, 5), torch.float32, device)
    src = torch.tensor([0, 2, -1, 1, 0, 5, 2], device=device)
    whole = contrastive_negative_sums(a, n, src)
    parts = [contrastive_negative_sums(a, n[s:s + 3], src[s:s + 3]) for s in (0, 3, 6)]
    torch.testing.assert_close(sum(p[0] for p in parts), whole[0], rtol=1e-6, atol=0)
    assert torch.equal(sum(p[1] for p in parts), whole[1])


@pytest.mark.parametrize("exclude", [False, True])
def test_opcheck(device, exclude):
    a = torch.randn(2, 3, 4, 5, device=device)
    n = torch.randn(3, 3, 4, 5, device=device)
    src = torch.tensor([1, -1, 0], device=device) if exclude else None
    op = torch.ops.csd_fast.contrastive_negative_sums.default
    torch.library.opcheck(op, (a, n, src))
    torch.library.opcheck(op, (a.contiguous(memory_format=torch.channels_last), n, src))
    torch.library.opcheck(op, (a.to(torch.bfloat16), n.to(torch.bfloat16), src))


@pytest.mark.parametrize("case,message", [
    (lambda a, n, s: (a[0], n, s), "anchor must be 4-D"),
    (lambda a, n, s: (a, n[:0], s), "K >= 1"),
    (lambda a, n, s: (a, n[:, :, :2], s), "negatives must be (K, C, H, W)"),
    (lambda a, n, s: (a, n.double(), s), "share one dtype"),
    (lambda a, n, s: (a.int(), n.int(), s), "floating-point"),
    (lambda a, n, s: (a[:, :0], n[:, :0], s), "anchor is empty"),
    (lambda a, n, s: (a, n, s.int()), "negative_source must be int64"),
    (lambda a, n, s: (a, n, s[:1]), "one entry per negative"),
])
def test_bad_input_is_a_clear_error(case, message):
    a, n, src = torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0, 1, -1])
    pattern = "contrastive_negative_sums: .*" + message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(RuntimeError, match=pattern):
        contrastive_negative_sums(*case(a, n, src))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_negatives_that_require_grad_are_refused(impl):
    a, n = torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="negatives must not require grad"):
        SUMS[impl](a, n)
    with pytest.raises(ValueError, match="negatives must not require grad"):
        ContrastiveLoss(load_vgg19(random_weights=True), backend=impl)(a, a, n)


# --- negative_distance: d_neg with the gradient read from the sign sum ------------------------

@pytest.mark.parametrize("exclude", [False, True])
def test_negative_distance_gradcheck(device, exclude):
    """Numerical derivatives of the distance itself (no kink within gradcheck's step of
    random float64 inputs) against the gradient the backward reads from the sign sum."""
    n = torch.randn(4, 2, 3, 5, dtype=torch.float64, device=device)
    src = torch.tensor([2, 0, -1, 1], device=device) if exclude else None

    def d_neg(a):
        dist, signs = contrastive_negative_sums(a, n, src)
        return negative_distance(a, dist.sum(), signs)

    a = torch.randn(3, 2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(d_neg, (a,))


def test_negative_distance_low_precision_gradient(device):
    a = features((2, 16, 8, 8), torch.bfloat16, device).requires_grad_()
    n = features((3, 16, 8, 8), torch.bfloat16, device)
    dist, signs = contrastive_negative_sums(a, n)
    (grad,) = torch.autograd.grad(2 * negative_distance(a, dist.sum(), signs), a)
    assert grad.dtype == torch.bfloat16
    want = 2 * oracle_sums(a, n)[1] / a.numel()  # multiples of 2 / numel: exact in bfloat16
    assert torch.equal(grad.double(), want)


def test_negative_distance_checks_its_inputs():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="sign_sum of the anchor's shape"):
        negative_distance(a, torch.tensor(1.0), torch.zeros(1, 3, 4, 4))


def test_torch_compile_without_graph_breaks(device):
    def loss(a, p, n):
        dist, signs = contrastive_negative_sums(a, n)
        return (p - a).abs().mean() / (negative_distance(a, dist.sum(), signs) + 1e-7)

    a = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    p, n = torch.randn(2, 4, 6, 6, device=device), torch.randn(3, 4, 6, 6, device=device)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(a, p, n)
    want = loss(a, p, n)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, a)[0], torch.autograd.grad(want, a)[0])


# --- the loss -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg64():
    torch.manual_seed(3)
    return load_vgg19(random_weights=True).double()


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("count", [1, 5, 7, 12])
@pytest.mark.parametrize("exclude", [False, True])
def test_loss_and_gradient_equal_the_reference(vgg64, backend, count, exclude):
    """float64, chunks of 3 negatives (K = 5, 7 not a multiple of it; K = 1 less than it):
    the loss and the student's gradient are the reference formulation's to rounding."""
    student = images(3, 3, 24, 24).requires_grad_()
    teacher, negatives = images(3, 3, 24, 24), images(count, 3, 24, 24)
    source = torch.tensor([(k + 2) % 4 - 1 for k in range(count)]) if exclude else None  # 1, 2, -1, 0, ..
    got = ContrastiveLoss(vgg64, backend=backend, neg_chunk=3)(student, teacher, negatives, source)
    want = reference_contrastive(vgg64, student, teacher, negatives, source)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    (g,) = torch.autograd.grad(got, student)
    (w,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-14)
    assert float(w.abs().max()) > 0


def test_chunk_size_changes_nothing_beyond_rounding(device):
    torch.manual_seed(4)
    vgg = load_vgg19(random_weights=True).to(device)
    student = (torch.rand(3, 3, 16, 16, device=device) * 255).requires_grad_()
    teacher = torch.rand(3, 3, 16, 16, device=device) * 255
    negatives = torch.rand(10, 3, 16, 16, device=device) * 255
    source = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1, 0, 1], device=device)
    results = []
    for chunk in (None, 1, 4, 10, 64):  # None: the batch size, 3
        loss = ContrastiveLoss(vgg, neg_chunk=chunk)(student, teacher, negatives, source)
        results.append((loss, torch.autograd.grad(loss, student)[0]))
    (loss0, grad0), *others = results
    for loss, grad in others:
        torch.testing.assert_close(loss, loss0, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad, grad0, rtol=1e-4, atol=1e-5 * float(grad0.abs().max()))


def test_lr_negatives_are_upsampled_chunk_by_chunk():
    """negatives_scale: LR negatives upsampled inside the loss, a chunk at a time, give the
    loss of the negatives upsampled beforehand, bit for bit."""
    torch.manual_seed(7)
    vgg = load_vgg19(random_weights=True)
    student = (torch.rand(2, 3, 16, 16) * 255).requires_grad_()
    teacher, lr_negatives = torch.rand(2, 3, 16, 16) * 255, torch.rand(5, 3, 8, 8) * 255
    loss = ContrastiveLoss(vgg, neg_chunk=2)
    got = loss(student, teacher, lr_negatives, negatives_scale=2)
    want = loss(student, teacher, upsample_negatives(lr_negatives, None, 2))
    assert torch.equal(got, want)
    assert torch.equal(*(torch.autograd.grad(x, student)[0] for x in (got, want)))
    with pytest.raises(ValueError, match=r"negatives \(5, 3, 8, 8\) upsampled x3 must share"):
        loss(student, teacher, lr_negatives, negatives_scale=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(device, dtype):
    """Under autocast the features are half precision, the sums float32: the loss stays
    within half-precision rounding of float32's, and the chunking still changes nothing
    beyond it."""
    torch.manual_seed(5)
    vgg = load_vgg19(random_weights=True).to(device)
    student = (torch.rand(2, 3, 16, 16, device=device) * 255).requires_grad_()
    teacher = torch.rand(2, 3, 16, 16, device=device) * 255
    negatives = torch.rand(5, 3, 16, 16, device=device) * 255
    want = ContrastiveLoss(vgg)(student, teacher, negatives)
    for chunk in (2, 5):
        with torch.autocast(device.type, dtype=dtype):
            got = ContrastiveLoss(vgg, neg_chunk=chunk)(student, teacher, negatives)
        assert got.dtype == torch.float32
        (grad,) = torch.autograd.grad(got, student)
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=3e-2, atol=0)


# --- memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_peak_memory_does_not_grow_with_k(backend):
    """Forward and backward to the student at B 2, HR 32: K = 64 within 1.25x of K = 8 in
    peak bytes (memory counts, not times; measured equal). Run as one chunk, the same K = 64
    takes more than twice K = 8's memory (measured 3.5x): the measurement sees the
    negatives' features."""
    torch.manual_seed(6)
    vgg = load_vgg19(random_weights=True)
    student = (torch.rand(2, 3, 32, 32) * 255).requires_grad_()
    teacher = torch.rand(2, 3, 32, 32) * 255

    def peak(count, chunk=None):
        negatives = torch.rand(count, 3, 32, 32) * 255
        loss = ContrastiveLoss(vgg, backend=backend, neg_chunk=chunk)
        return cpu_peak_bytes(lambda: torch.autograd.grad(loss(student, teacher, negatives), student))

    small, large = peak(8), peak(64)
    assert large <= 1.25 * small, (small, large)
    assert peak(64, chunk=64) > 2 * small


# --- training with K = 256 ------------------------------------------------------------------

TINY = dict(scale=2, n_feats=8, n_resblocks=1, lr_patch=8, batch=4, width=0.5, stage="csd",
            negatives="dataset", neg_num=256, random_vgg=True, progress=False, val_data=None,
            tensorboard=False, log_every=1)


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory):
    return str(noise_folder(tmp_path_factory.mktemp("k256") / "hr", count=6, seed=2))


def test_k256_from_the_dataset_trains_and_resumes_exactly(noise_images, tmp_path):
    """negatives=dataset neg_num=256, batch 4, chunks of 100, 100 and 56 negatives: 4
    iterations straight, and 2 then resumed to 4, end bit for bit equal; the contrastive term
    moved the weights."""
    def cfg(out, iterations, **kw):
        return load_config(**{**TINY, "train_data": noise_images, "out_dir": str(tmp_path / out),
                              "iterations": iterations, "checkpoint_every": 2, "neg_chunk": 100,
                              **kw})

    full = train(cfg("full", 4))
    train(cfg("resumed", 2))
    resumed = train(cfg("resumed", 4), resume=True)
    assert resumed["iteration"] == 4 and full["terms"]["contrastive"] > 0
    a, b = (torch.load(r["last"], weights_only=True)["model"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    without = train(cfg("l1_only", 4, lambda_c=0.0))
    c = torch.load(without["last"], weights_only=True)["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a)
