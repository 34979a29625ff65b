"""Peak CPU memory of one whole csd_fast CSD step at the recipe's size, for the given numbers
of negatives K (negatives=dataset): what test_bench_negatives_scaling's fused step rows
measure, one call per K instead of a timed group, so that K = 1024 at HR 192 takes minutes,
not an hour.

    python benchmarks/negatives_peak_memory.py 10 64 1024 [--batch 16 --hr 192]

EDSR-baseline x4, fp32, random VGG19; one warm-up step first (cuDNN/oneDNN plans, Adam's
state), then each K's step through the profiler's allocation events (cpu_peak_mb).
"""
import argparse
import time

import torch

from csd_fast import EDSRCSD
from csd_fast.losses import load_vgg19

from conftest import cpu_peak_mb
from test_bench_csd_step import fused_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", type=int, nargs="+", help="numbers of negatives K")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hr", type=int, default=192, help="HR patch side (LR is hr / 4)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = EDSRCSD.from_preset("edsr-baseline", scale=4)
    vgg = load_vgg19(random_weights=True)

    def images(count, side, seed):
        return torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 255

    lr, hr = images(args.batch, args.hr // 4, 1), images(args.batch, args.hr, 2)
    fused_step(model, vgg, lr, hr, None, count=10, negatives_lr=images(10, args.hr // 4, 3))()
    print(f"B {args.batch}, HR {args.hr}, one fp32 step, {torch.__version__}")
    for count in args.counts:
        step = fused_step(model, vgg, lr, hr, None, count=count,
                          negatives_lr=images(count, args.hr // 4, 3))
        start = time.perf_counter()
        peak = cpu_peak_mb(step)
        print(f"K = {count}: peak {peak:.0f} MB ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
