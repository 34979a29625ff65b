"""EDSRCSD against a re-implementation written here from docs/method.md, section 1."""
import math

import pytest
import torch

from csd_fast import EDSRCSD

MEAN = (0.4488, 0.4371, 0.4040)


def shuffle(x, s):
    """Pixel shuffle written out: channel c*s*s + i*s + j goes to (c, h*s + i, w*s + j)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c // (s * s), s, s, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // (s * s), h * s, w * s)


def written_out_forward(params, x, *, scale, blocks, res_scale, width, n_feats, rgb_range=255.0):
    """EDSR at width ratio `width` from a name -> (weight, bias) table (docs/method.md, section 1)."""
    w = int(n_feats * width)

    def conv(t, name, n_out, n_in):
        weight, bias = params[name]
        return torch.nn.functional.conv2d(t, weight[:n_out, :n_in], bias[:n_out], padding=1)

    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1) * rgb_range
    head = conv(x - mean, "head", w, 3)
    t = head
    for i in range(blocks):
        r = conv(torch.relu(conv(t, f"b{i}.1", w, w)), f"b{i}.2", w, w)
        t = t + res_scale * r
    t = conv(t, "body", w, w) + head
    stages = [3] if scale == 3 else [2] * int(math.log2(scale))
    for j, s in enumerate(stages):
        t = shuffle(conv(t, f"up{j}", s * s * w, w), s)
    return conv(t, "tail", 3, w) + mean


def params_of(model):
    table = {"head": model.head, "body": model.body_conv, "tail": model.tail}
    for i, block in enumerate(model.body):
        table[f"b{i}.1"], table[f"b{i}.2"] = block.conv1, block.conv2
    for j, up in enumerate(model.upsampler):
        table[f"up{j}"] = up
    return {k: (m.weight, m.bias) for k, m in table.items()}


def random_model(scale, n_feats=16, blocks=3, res_scale=0.5, backend="reference"):
    model = EDSRCSD(scale, blocks, n_feats, res_scale, backend=backend).double()
    with torch.no_grad():
        for p in model.parameters():  # default init is tiny in bias; spread it out
            p.normal_(0, 0.2)
    return model


WIDTHS = [1.0, 0.5, 0.25, 0.3]


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("width", WIDTHS)
def test_forward_matches_the_written_out_network(backend, scale, width):
    model = random_model(scale, backend=backend)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64) * 255
    got = model(x, width)
    want = written_out_forward(params_of(model), x, scale=scale, blocks=3, res_scale=0.5,
                         width=width, n_feats=16)
    assert got.shape == (2, 3, 7 * scale, 9 * scale)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("width", WIDTHS)
def test_backends_agree_with_gradients(width):
    ref = random_model(4)
    fused = random_model(4, backend="fused")
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64) * 255
    out_r, out_f = ref(x, width), fused(x, width)
    torch.testing.assert_close(out_f, out_r)
    g = torch.randn_like(out_r)
    grads_r = torch.autograd.grad(out_r, list(ref.parameters()), g)
    grads_f = torch.autograd.grad(out_f, list(fused.parameters()), g)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b)


def test_student_trains_only_the_weight_prefix():
    model = random_model(2)
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64) * 255
    model(x, 0.5).sum().backward()
    w = model.channels(0.5)
    grad = model.body[0].conv1.weight.grad
    assert grad[:w, :w].abs().sum() > 0
    assert grad[w:].abs().sum() == 0 and grad[:, w:].abs().sum() == 0
    assert model.tail.weight.grad[:, w:].abs().sum() == 0
    assert model.upsampler[0].weight.grad[4 * w:].abs().sum() == 0


def test_student_equals_small_network_built_from_prefixes():
    """Width r of a big net == a separate width-1 net holding the copied prefixes."""
    big = random_model(4, n_feats=16)
    small = random_model(4, n_feats=4)
    w = big.channels(0.25)
    assert w == 4
    with torch.no_grad():
        for (name, p_small), p_big in zip(small.named_parameters(), big.parameters()):
            idx = tuple(slice(0, n) for n in p_small.shape)
            p_small.copy_(p_big[idx])
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) * 255
    torch.testing.assert_close(big(x, 0.25), small(x, 1.0))


@pytest.mark.parametrize("width,expected", [(1.0, 43.09e6), (0.5, 10.8e6), (0.25, 2.70e6)])
def test_parameter_counts_match_the_paper(width, expected):
    model = EDSRCSD.from_preset("edsr", scale=4)
    count = model.num_parameters(width)
    digits = 2 if width != 0.5 else 1
    assert round(count / 1e6, digits) == round(expected / 1e6, digits)
    if width == 1.0:
        trainable = sum(p.numel() for p in model.parameters())
        assert count == trainable == 43_089_923


def test_presets():
    edsr = EDSRCSD.from_preset("edsr", scale=3)
    assert (edsr.n_resblocks, edsr.n_feats, edsr.res_scale) == (32, 256, 0.1)
    base = EDSRCSD.from_preset("edsr-baseline", scale=2)
    assert (base.n_resblocks, base.n_feats, base.res_scale) == (16, 64, 1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        EDSRCSD.from_preset("rcan")
    assert EDSRCSD(**base.config()).config() == base.config()


@pytest.mark.parametrize("width,error,message", [
    (0.0, ValueError, r"width must be in \(0, 1\]"),
    (1.5, ValueError, r"width must be in \(0, 1\]"),
    (-0.25, ValueError, r"width must be in \(0, 1\]"),
    (0.01, ValueError, "0 channels"),
    (True, TypeError, "width must be a number"),
    ("0.5", TypeError, "width must be a number"),
])
def test_bad_width_is_a_clear_error(width, error, message):
    model = EDSRCSD(2, 1, 16)
    with pytest.raises(error, match=message):
        model(torch.rand(1, 3, 4, 4), width)


@pytest.mark.parametrize("x,error,message", [
    (torch.rand(3, 4, 4), ValueError, r"\(N, 3, H, W\)"),
    (torch.rand(1, 1, 4, 4), ValueError, r"\(N, 3, H, W\)"),
    (torch.randint(0, 255, (1, 3, 4, 4), dtype=torch.uint8), TypeError, "floating-point"),
    (torch.rand(1, 3, 4, 4, dtype=torch.float64), TypeError, "autocast"),
    (torch.rand(1, 3, 0, 4), ValueError, "empty"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_input_is_a_clear_error(x, error, message):
    with pytest.raises(error, match=message):
        EDSRCSD(2, 1, 8)(x)


def test_bad_construction_is_a_clear_error():
    with pytest.raises(ValueError, match="scale"):
        EDSRCSD(scale=5)
    with pytest.raises(ValueError, match="backend"):
        EDSRCSD(backend="triton")


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_channels_last_in_channels_last_out(width, backend):
    model = random_model(2, backend=backend)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64) * 255
    out = model(x.contiguous(memory_format=torch.channels_last), width)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, model(x, width))


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_bfloat16_autocast_is_close_to_float32(backend):
    model = EDSRCSD(2, 2, 16, backend=backend)
    x = torch.rand(1, 3, 8, 8) * 255
    want = model(x, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, 0.5)
    assert torch.isfinite(got).all() and got.dtype == torch.bfloat16
    err = (got.float() - want).norm() / want.norm()
    assert err < 2e-2, err


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_rgb_range_one_with_internal_range_255(backend):
    """BasicSR convention: images in [0, 1], network sees (x - mean) * 255."""
    ref = random_model(2)
    unit = EDSRCSD(**{**ref.config(), "rgb_range": 1.0, "img_range": 255.0}, backend=backend).double()
    unit.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(unit(x), ref(x * 255) / 255)


def test_cuda_matches_cpu(device):
    if device.type != "cuda":
        pytest.skip("compares a CUDA run with the CPU")
    model = random_model(4)
    x = torch.rand(1, 3, 9, 7, dtype=torch.float64) * 255
    want = model(x, 0.25)
    got = model.to(device)(x.to(device), 0.25)
    torch.testing.assert_close(got.cpu(), want)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_csd_step_same_loss_and_gradients_on_both_backends(exclude_self):
    """One CSD training step: teacher and student forward, VGG contrastive loss, backward."""
    from csd_fast.losses import CSDLoss, load_vgg19

    torch.manual_seed(1)
    vgg = load_vgg19(random_weights=True).double()
    ref = random_model(2)
    fused = random_model(2, backend="fused")
    fused.load_state_dict(ref.state_dict())
    lr = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 255
    hr = torch.rand(4, 3, 16, 16, dtype=torch.float64) * 255
    results = []
    for model, backend in ((ref, "reference"), (fused, "fused")):
        loss_fn = CSDLoss(vgg, neg_num=3, exclude_self=exclude_self, backend=backend)
        gen = torch.Generator().manual_seed(5)
        terms = loss_fn(model(lr, 0.25), model(lr, 1.0), hr, lr, 2, gen)
        grads = torch.autograd.grad(terms["total"], list(model.parameters()))
        assert terms["contrastive"].item() > 0
        results.append((terms["total"], grads))
    (loss_r, grads_r), (loss_f, grads_f) = results
    assert loss_r.item() > 0
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-9, atol=0)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
