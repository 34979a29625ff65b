"""GPU ceilings and reference-path baselines that the fused CUDA kernels are judged by.

Measures, in one process on one GPU: device-to-device copy bandwidth; the contrastive
distance op against that bandwidth (and against the reference formulation); EDSR x4
(paper preset) inference on a 480x270 input at widths 0.25 and 1.0 with the reference
backend in eager fp32, eager bf16 (NCHW and channels_last) and torch.compile bf16, and
the fused backend (csd_fast's tensor-core convs) in bf16 channels_last.
Prints a markdown table last; --json writes every number.

    python benchmarks/gpu_baselines.py --json out.json
"""
import argparse
import json
import statistics
import time

import torch

import csd_fast
from csd_fast.ops import contrastive_distance


def cuda_time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth():
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9  # GB/s, bytes read + written


def contrastive_rows(copy_gbs):
    rows = []
    for name, channels, stride in [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4),
                                   ("relu4_1", 512, 8), ("relu5_1", 512, 16)]:
        size = 192 // stride
        a = torch.randn(16, channels, size, size, device="cuda")
        p = torch.randn_like(a)
        n = torch.randn(10, channels, size, size, device="cuda")
        with torch.no_grad():
            fwd_ms = cuda_time_ms(lambda: contrastive_distance(a, p, n))
        gbs = (2 * 16 + 10) * a[0].numel() * 4 / (fwd_ms * 1e-3) / 1e9
        rows.append(dict(case=f"contrastive fwd {name} B16 K10 fp32", ms=fwd_ms,
                         note=f"{gbs:.0f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy"))
    return rows


def edsr_rows(compile_too=True):
    rows = []
    model = csd_fast.EDSRCSD.from_preset("edsr", scale=4, backend="reference").cuda().eval()
    x = torch.rand(1, 3, 270, 480, device="cuda") * 255
    variants = [("eager fp32 (TF32 convs)", model, x)]
    bf16 = csd_fast.EDSRCSD.from_preset("edsr", scale=4, backend="reference").cuda().eval().bfloat16()
    bf16.load_state_dict(model.state_dict())
    variants.append(("eager bf16", bf16, x.bfloat16()))
    bf16_cl = bf16.to(memory_format=torch.channels_last)
    x_cl = x.bfloat16().contiguous(memory_format=torch.channels_last)
    variants.append(("eager bf16 channels_last", bf16_cl, x_cl))
    for width in (0.25, 1.0):
        for label, net, inp in variants:
            with torch.no_grad():
                ms = cuda_time_ms(lambda: net(inp, width), warmup=2, iters=10)
            rows.append(dict(case=f"EDSR x4 w{width} 480x270 {label}", ms=ms, note="reference backend"))
        eager_ms = rows[-1]["ms"]  # eager bf16 channels_last
        rows.append(fused_row(model, bf16_cl, x, x_cl, width, eager_ms))
        if compile_too:
            compiled = torch.compile(lambda t, w=width: bf16_cl(t, w))
            t0 = time.time()
            with torch.no_grad():
                compiled(x_cl)
                ms = cuda_time_ms(lambda: compiled(x_cl), warmup=2, iters=10)
            fused_ms = rows[-1]["ms"]
            rows.append(dict(case=f"EDSR x4 w{width} 480x270 torch.compile bf16 channels_last",
                             ms=ms, note=f"reference backend, compile {time.time() - t0:.0f} s; "
                                         f"compile / fused = {ms / fused_ms:.2f}x"))
    return rows


def fused_row(model_fp32, model_bf16, x, x_cl, width, eager_ms):
    """backend="fused" (csd_fast's tensor-core convs) on the bf16 channels-last model,
    with its error against the fp32 eager output beside that of the bf16 eager one."""
    with torch.no_grad():
        want = model_fp32(x, width)
        eager_err = (model_bf16(x_cl, width).float() - want).abs().max().item()
        model_bf16.backend = "fused"
        try:
            fused_err = (model_bf16(x_cl, width).float() - want).abs().max().item()
            ms = cuda_time_ms(lambda: model_bf16(x_cl, width), warmup=2, iters=10)
        finally:
            model_bf16.backend = "reference"
    return dict(case=f"EDSR x4 w{width} 480x270 fused bf16 channels_last", ms=ms,
                note=f"eager / fused = {eager_ms / ms:.2f}x; max |err| vs fp32 {fused_err:.2f} "
                     f"(eager bf16 {eager_err:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.backends.cudnn.benchmark = True
    copy_gbs = copy_bandwidth()
    rows = [dict(case="device-to-device copy 1 GiB", ms=float("nan"), note=f"{copy_gbs:.0f} GB/s")]
    rows += contrastive_rows(copy_gbs)
    rows += edsr_rows(compile_too=not args.no_compile)
    header = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                  cuda=torch.version.cuda, build=csd_fast.build_info())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=header, rows=rows), f, indent=1)
    print(f"\n{header['gpu']}, torch {header['torch']}, CUDA {header['cuda']}\n")
    print("| case | median ms | note |\n|---|---:|---|")
    for row in rows:
        print(f"| {row['case']} | {row['ms']:.3f} | {row['note']} |")


if __name__ == "__main__":
    main()
