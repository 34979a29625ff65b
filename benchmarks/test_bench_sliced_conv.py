"""The sliced-conv ops against plain PyTorch on the same inputs: EDSR-baseline's
64-channel residual block and its x2 upsampler stage (conv to 256 channels + pixel
shuffle), at a 128x128 LR image, forward alone (inference) and forward + backward.

fused: csd_fast.ops on channels-last tensors, as EDSRCSD(backend="fused") runs them.
fused_nchw: the same ops given and returning NCHW (two layout conversions per call).
reference: the plain-PyTorch module code on NCHW tensors, what a user's EDSR runs.
reference_channels_last: the same plain code fed channels-last tensors, to show how
much of the gain is layout and how much is the op's own work."""
import pytest
import torch

from csd_fast import ops

from conftest import run_benchmark

CHANNELS = 64


def block_inputs(device, size):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, CHANNELS, size, size, device=device, generator=gen)
    params = []
    for _ in range(2):
        params.append(torch.randn(CHANNELS, CHANNELS, 3, 3, device=device, generator=gen) * 0.05)
        params.append(torch.randn(CHANNELS, device=device, generator=gen) * 0.1)
    return x, params


def upsampler_inputs(device, size):
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, CHANNELS, size, size, device=device, generator=gen)
    w = torch.randn(4 * CHANNELS, CHANNELS, 3, 3, device=device, generator=gen) * 0.05
    b = torch.randn(4 * CHANNELS, device=device, generator=gen) * 0.1
    return x, [w, b]


CASES = {
    "residual_block": (block_inputs, lambda x, p: ops.residual_block(x, *p, CHANNELS, 1.0),
                       lambda x, p: ops.residual_block_reference(x, *p, CHANNELS, 1.0)),
    "conv_pixel_shuffle": (upsampler_inputs,
                           lambda x, p: ops.conv3x3_pixel_shuffle(x, *p, CHANNELS, CHANNELS, 2),
                           lambda x, p: ops.conv3x3_pixel_shuffle_reference(x, *p, CHANNELS, CHANNELS, 2)),
}
IMPLS = ["fused", "fused_nchw", "reference", "reference_channels_last"]


def prepare(case, impl, device, size, train):
    make_inputs, fused, reference = CASES[case]
    x, params = make_inputs(device, size)
    want = reference(x, params)
    if impl in ("fused", "reference_channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    fn = fused if impl.startswith("fused") else reference
    torch.testing.assert_close(fn(x, params), want, rtol=1e-4, atol=1e-4)
    if not train:
        return lambda: fn(x, params)
    x.requires_grad_()
    for p in params:
        p.requires_grad_()
    # the incoming gradient in the output's layout, as the next layer would pass it
    grad_out = torch.randn_like(fn(x, params))

    def step():
        return torch.autograd.grad(fn(x, params), [x, *params], grad_out)

    # Gradients are checked in float64: in float32 a pre-activation within rounding of
    # zero can fall on either side of the ReLU in two correct implementations.
    x64, params64 = leaves(x.double()), [leaves(p.double()) for p in params]
    got = torch.autograd.grad(fn(x64, params64), [x64, *params64], grad_out.double())
    want_grads = torch.autograd.grad(reference(x64, params64), [x64, *params64], grad_out.double())
    for a, b in zip(got, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    return step


def leaves(t):
    return t.detach().requires_grad_()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_op_forward(benchmark, device, case, impl):
    size = 128
    benchmark.group = f"{case} {device.type} forward {CHANNELS}ch {size}x{size}"
    fn = prepare(case, impl, device, size, train=False)
    with torch.no_grad():
        run_benchmark(benchmark, fn, device, rounds=30)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_op_forward_backward(benchmark, device, case, impl):
    size = 128
    benchmark.group = f"{case} {device.type} forward+backward {CHANNELS}ch {size}x{size}"
    run_benchmark(benchmark, prepare(case, impl, device, size, train=True), device, rounds=15)
