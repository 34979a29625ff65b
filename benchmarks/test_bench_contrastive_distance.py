"""Contrastive distance of one VGG layer, forward + backward to the anchor.

fused: csd_fast.ops.contrastive_distance. reference: the formulation of the CSD
reference code, which repeats anchors and negatives to B x K maps. loop: the plain
PyTorch path without materialisation (csd_fast.ops.contrastive_distance_reference)."""
import pytest
import torch

from csd_fast.ops import contrastive_distance, contrastive_distance_reference

from conftest import run_benchmark

# VGG19 relu1_1 .. relu5_1 feature shapes for batch 16, K 10; patch 48 on the CPU
# (the reference formulation needs B*K maps: at 192 that is ~24 GB for relu1_1), 192 on GPU.
LAYERS = [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16)]


def materialised(anchor, positive, negatives):
    b, k = anchor.size(0), negatives.size(0)
    a_rep = anchor.unsqueeze(1).expand(b, k, *anchor.shape[1:]).reshape(b * k, *anchor.shape[1:])
    n_rep = negatives.unsqueeze(0).expand(b, k, *anchor.shape[1:]).reshape(b * k, *anchor.shape[1:])
    d_pos = (positive - anchor).abs().mean()
    d_neg = (n_rep - a_rep).abs().view(b, k, -1).sum(1).mean()
    return d_pos, d_neg


IMPLS = {"fused": contrastive_distance, "reference": materialised, "loop": contrastive_distance_reference}


def inputs(device, channels, stride, patch, dtype=torch.float32):
    size = patch // stride
    gen = torch.Generator(device=device).manual_seed(channels * 100 + stride)
    a = torch.randn(16, channels, size, size, device=device, generator=gen, dtype=dtype)
    p = torch.randn(16, channels, size, size, device=device, generator=gen, dtype=dtype)
    n = torch.randn(10, channels, size, size, device=device, generator=gen, dtype=dtype)
    return a.requires_grad_(), p, n


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=[f"relu{i+1}_1" for i in range(5)])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_contrastive_distance(benchmark, device, layer, impl):
    channels, stride = LAYERS[layer]
    patch = 192 if device.type == "cuda" else 48
    a, p, n = inputs(device, channels, stride, patch)
    benchmark.group = f"contrastive_distance {device.type} relu{layer+1}_1 B16 K10 patch{patch}"

    def step():
        d_pos, d_neg = IMPLS[impl](a, p, n)
        (grad,) = torch.autograd.grad(d_pos / (d_neg + 1e-7), a)
        return grad

    want = torch.autograd.grad(
        (lambda d: d[0] / (d[1] + 1e-7))(contrastive_distance_reference(a.double(), p.double(), n.double())),
        a)[0]
    torch.testing.assert_close(step().double(), want.double(), rtol=1e-3, atol=1e-9)
    run_benchmark(benchmark, step, device, measure_memory=True)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_contrastive_loss_all_layers(benchmark, device, impl):
    """CSD's contrastive term over the five VGG layers at once (forward + backward to
    every anchor): the whole loss's cost and peak memory, not one layer's."""
    patch = 192 if device.type == "cuda" else 48
    layers = [inputs(device, c, s, patch) for c, s in LAYERS]
    weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    benchmark.group = f"contrastive_loss {device.type} 5 layers B16 K10 patch{patch}"

    def loss_of(distance, tensors):
        total = 0
        for w, (a, p, n) in zip(weights, tensors):
            d_pos, d_neg = distance(a, p, n)
            total = total + w * d_pos / (d_neg + 1e-7)
        return total

    def step():
        return torch.autograd.grad(loss_of(IMPLS[impl], layers), [a for a, _, _ in layers])

    doubles = [(a.detach().double().requires_grad_(), p.double(), n.double()) for a, p, n in layers]
    want = torch.autograd.grad(loss_of(contrastive_distance_reference, doubles), [a for a, _, _ in doubles])
    for got, exp in zip(step(), want):
        torch.testing.assert_close(got.double(), exp, rtol=1e-3, atol=1e-9)
    run_benchmark(benchmark, step, device, measure_memory=True)
