"""CSD loss against the reference formula (tests/_loss_helpers.py; docs/method.md, section 2)."""
import pytest
import torch
import torch.nn.functional as F

from csd_fast.losses import (CSDLoss, ContrastiveLoss, VGG19Features, load_vgg19,
                             make_negatives, torchvision_cache_path)

from _loss_helpers import images, reference_contrastive


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(3)
    return load_vgg19(random_weights=True).double()


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("exclude", [False, True])
def test_contrastive_value_and_gradient(vgg, backend, exclude):
    student = images(3, 3, 32, 32).requires_grad_()
    teacher, negatives = images(3, 3, 32, 32), images(2, 3, 32, 32)
    source = torch.tensor([2, 0]) if exclude else None
    got = ContrastiveLoss(vgg, backend=backend)(student, teacher, negatives, source)
    want = reference_contrastive(vgg, student, teacher, negatives, source)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    (g,) = torch.autograd.grad(got, student)
    (w,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-14)


def test_teacher_gradient_when_not_detached(vgg):
    student, teacher = images(2, 3, 16, 16).requires_grad_(), images(2, 3, 16, 16).requires_grad_()
    negatives = images(2, 3, 16, 16)
    got = ContrastiveLoss(vgg)(student, teacher, negatives)
    want = reference_contrastive(vgg, student, teacher, negatives)
    g = torch.autograd.grad(got, (student, teacher))
    w = torch.autograd.grad(want, (student, teacher))
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-14)


def test_total_objective(vgg):
    torch.manual_seed(0)
    lr = images(4, 3, 8, 8)
    student, teacher, hr = images(4, 3, 16, 16).requires_grad_(), images(4, 3, 16, 16), images(4, 3, 16, 16)
    loss = CSDLoss(vgg, lambda_c=200, lambda_t=1, neg_num=3)
    terms = loss(student, teacher, hr, lr, 2, generator=torch.Generator().manual_seed(5))
    negatives, _ = make_negatives(lr, 2, 3, torch.Generator().manual_seed(5))
    want = (F.l1_loss(student, hr) + F.l1_loss(teacher, hr)
            + 200 * reference_contrastive(vgg, student, teacher, negatives))
    torch.testing.assert_close(terms["total"], want, rtol=1e-10, atol=0)
    baseline = CSDLoss(None, lambda_c=0, lambda_t=0)(student, None, hr, lr, 2)
    assert set(baseline) == {"l1_student", "total"}
    torch.testing.assert_close(baseline["total"], F.l1_loss(student, hr))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_negatives_from_outside_the_batch(vgg, backend):
    """negatives_lr (negatives=dataset): K = 5 LR images for a batch of 2, every one a negative
    of every anchor; exclude_self leaves no pair out here (the draw excluded the anchors' images)."""
    lr, pool = images(2, 3, 8, 8), images(5, 3, 8, 8)
    student, teacher, hr = images(2, 3, 16, 16).requires_grad_(), images(2, 3, 16, 16), images(2, 3, 16, 16)
    loss = CSDLoss(vgg, lambda_c=200, lambda_t=1, neg_num=5, exclude_self=True, backend=backend)
    terms = loss(student, teacher, hr, lr, 2, negatives_lr=pool)
    negatives = F.interpolate(pool, scale_factor=2, mode="bicubic", align_corners=False)
    want = (F.l1_loss(student, hr) + F.l1_loss(teacher, hr)
            + 200 * reference_contrastive(vgg, student, teacher, negatives))
    torch.testing.assert_close(terms["total"], want, rtol=1e-10, atol=0)
    (g,) = torch.autograd.grad(terms["total"], student)
    (w,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-14)


def test_make_negatives():
    lr = images(5, 3, 6, 7)
    negatives, source = make_negatives(lr, 3, 4, torch.Generator().manual_seed(1))
    assert negatives.shape == (4, 3, 18, 21) and not negatives.requires_grad
    assert len(set(source.tolist())) == 4
    want = F.interpolate(lr[source], scale_factor=3, mode="bicubic", align_corners=False)
    torch.testing.assert_close(negatives, want)
    with pytest.raises(ValueError, match="neg_num=6"):
        make_negatives(lr, 3, 6)


def test_vgg_loads_torchvision_layout(tmp_path):
    torch.manual_seed(0)
    source = VGG19Features()
    state = {k: torch.randn_like(v) for k, v in source.state_dict().items()}
    state["features.34.weight"] = torch.randn(512, 512, 3, 3)  # layers past relu5_1
    state["classifier.0.weight"] = torch.randn(8, 8)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    vgg = load_vgg19(path)
    for key, value in vgg.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_missing_or_wrong_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        load_vgg19()
    assert str(torchvision_cache_path()).startswith(str(tmp_path))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.randn(3, 3)}, bad)
    with pytest.raises(ValueError, match="missing"):
        load_vgg19(bad)


def test_vgg_keys_match_torchvision():
    torchvision = pytest.importorskip("torchvision")
    theirs = torchvision.models.vgg19().features[:30].state_dict()
    ours = VGG19Features().features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
