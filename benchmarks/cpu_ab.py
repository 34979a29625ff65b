"""A/B timing of two csd_fast builds on the CPU, one process per build.

Benchmark medians on a small VM move by up to 30% between runs, more than a change to the
ops is likely to; alternating fresh processes of two builds on the same machine and
keeping each call's minimum separates the two. Prints one line per run (ms):

    for i in 1 2 3; do PYTHONPATH=<build A> python benchmarks/cpu_ab.py A
                       PYTHONPATH=<build B> python benchmarks/cpu_ab.py B; done
"""
import sys
import time

import torch

from csd_fast import EDSRCSD, ops

CL = torch.channels_last


def fastest_ms(fn, calls=15):
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main(label):
    torch.manual_seed(0)
    x = torch.randn(1, 64, 128, 128).contiguous(memory_format=CL)
    w1, b1 = torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64)
    w2, b2 = torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64)
    up_w, up_b = torch.randn(256, 64, 3, 3) * 0.05, torch.randn(256)
    model = EDSRCSD.from_preset("edsr-baseline", scale=4).eval()
    image = (torch.rand(1, 3, 128, 128) * 255).contiguous(memory_format=CL)
    with torch.no_grad():
        times = dict(block=fastest_ms(lambda: ops.residual_block(x, w1, b1, w2, b2, 64, 1.0)),
                     shuffle=fastest_ms(lambda: ops.conv3x3_pixel_shuffle(x, up_w, up_b, 64, 64, 2)),
                     edsr025=fastest_ms(lambda: model(image, 0.25)),
                     edsr1=fastest_ms(lambda: model(image, 1.0), calls=5))
    xg, w1g, w2g = (t.clone().requires_grad_() for t in (x, w1, w2))
    times["block_fb"] = fastest_ms(
        lambda: ops.residual_block(xg, w1g, b1, w2g, b2, 64, 1.0).sum().backward())
    print(label, " ".join(f"{k}={v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
