"""The sliced-conv ops in bf16 on the GPU, where they run fused cuDNN graphs, at the
shapes of EDSR x4 at width 0.25 (64 of 256 channels) on a 480x270 LR image:

- residual_block: the 32 blocks of the body, 64 channels at 270x480;
- conv3x3_pixel_shuffle: the two x2 upsampler stages, 64 -> 256 channels at 270x480
  and at 540x960;
- sliced_conv3x3 tail: 64 -> 3 channels at 1080x1920.

fused: csd_fast.ops on channels-last bf16 (the prefix of full-size weights, as the model
calls them). reference_channels_last: the plain-PyTorch reference on the same tensors
(cuDNN, channels-last). Both are checked against float64 first. Skipped without CUDA;
the whole-network comparison (fused, eager, torch.compile) is in gpu_baselines.py."""
import pytest
import torch

from csd_fast import ops

from conftest import CUDA_READY, run_benchmark

pytestmark = pytest.mark.skipif(not CUDA_READY, reason="no CUDA GPU/kernels")

FULL, WIDTH = 256, 64  # EDSR's n_feats and the width-0.25 student's channels
CL = torch.channels_last


def layer(rows, cols, gen):
    w = torch.randn(rows, cols, 3, 3, device="cuda", generator=gen) / (9 * cols) ** 0.5
    b = torch.randn(rows, device="cuda", generator=gen) * 0.1
    return w.bfloat16(), b.bfloat16()


def feature_map(h, w, gen):
    x = torch.randn(1, WIDTH, h, w, device="cuda", generator=gen)
    return x.bfloat16().contiguous(memory_format=CL)


def residual_block_case(gen):
    x = feature_map(270, 480, gen)
    params = [*layer(FULL, FULL, gen), *layer(FULL, FULL, gen)]
    return x, params, lambda x, p: ops.residual_block(x, *p, WIDTH, 0.1), \
        lambda x, p: ops.residual_block_reference(x, *p, WIDTH, 0.1)


def upsampler_case(h, w):
    def make(gen):
        x = feature_map(h, w, gen)
        params = list(layer(4 * FULL, FULL, gen))
        return x, params, lambda x, p: ops.conv3x3_pixel_shuffle(x, *p, WIDTH, WIDTH, 2), \
            lambda x, p: ops.conv3x3_pixel_shuffle_reference(x, *p, WIDTH, WIDTH, 2)
    return make


def tail_case(gen):
    x = feature_map(1080, 1920, gen)
    params = list(layer(3, FULL, gen))
    return x, params, lambda x, p: ops.sliced_conv3x3(x, *p, 3, WIDTH), \
        lambda x, p: ops.sliced_conv3x3_reference(x, *p, 3, WIDTH)


CASES = {
    "residual_block 64ch 270x480": residual_block_case,
    "conv3x3_pixel_shuffle 64->256 x2 270x480": upsampler_case(270, 480),
    "conv3x3_pixel_shuffle 64->256 x2 540x960": upsampler_case(540, 960),
    "sliced_conv3x3 tail 64->3 1080x1920": tail_case,
}


def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("impl", ["fused", "reference_channels_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_sliced_conv_bf16_forward(benchmark, case, impl):
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    x, params, fused, reference = CASES[case](gen)
    fn = fused if impl == "fused" else reference
    with torch.no_grad():
        want = reference(x.double(), [p.double() for p in params])
        err = relative_error(fn(x, params), want)
        assert err < 1e-2, f"{impl} relative error {err:.3g} against float64"
        benchmark.group = f"{case} cuda bf16 forward"
        benchmark.extra_info["impl"] = impl
        benchmark.extra_info["relative_error"] = err
        run_benchmark(benchmark, lambda: fn(x, params), device, rounds=20)
