"""The GPU comparisons csd_fast's CUDA ops are judged by, in one process on one GPU.

- Per layer (bf16, channels-last, EDSR's shapes): csd_fast's op against eager PyTorch
  (conv, then its epilogue), cuDNN's conv alone (the floor), and torch.compile of the
  eager layer; with TF/s of the conv.
- Whole network: EDSR x4 (paper preset) on a 480x270 input to 1920x1080, no_grad, at
  widths 0.25 and 1.0: backend="fused" (bf16 weights, the same replayed from a CUDA graph
  as eval and upscale run it, and fp32 weights under autocast; packed weights cached)
  against the reference backend eager bf16 channels-last and
  torch.compile of it (default and, with --max-autotune, max-autotune).
- The contrastive distance op against device-to-device copy bandwidth.

Every timed variant is first checked against a float64 or float32 reference. Prints
markdown tables last; --json writes every number.

    python benchmarks/gpu_baselines.py --json out.json [--max-autotune] [--no-compile]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import csd_fast
from csd_fast import ops
from csd_fast.cuda_graphs import GraphCache
from csd_fast.ops import contrastive_distance

CL = torch.channels_last
BF = torch.bfloat16


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


def tflops(n, h, w, c_in, c_out, ms):
    return 2 * n * h * w * c_in * c_out * 9 / (ms * 1e-3) / 1e12


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


# ---------------------------------------------------------------------------- per layer

LAYERS = [  # (name, kind, n, h, w, c_in, c_out)
    ("256->256 +bias+relu, 270x480", "relu", 1, 270, 480, 256, 256),
    ("256->256 +bias, x + conv, 270x480", "residual", 1, 270, 480, 256, 256),
    ("64->64 +bias+relu, 270x480", "relu", 1, 270, 480, 64, 64),
    ("64->64 +bias, x + conv, 270x480", "residual", 1, 270, 480, 64, 64),
    ("256 residual block, 270x480", "block", 1, 270, 480, 256, 256),
    ("64 residual block, 270x480", "block", 1, 270, 480, 64, 64),
    ("256->1024 conv+shuffle, 540x960", "shuffle", 1, 540, 960, 256, 1024),
    ("64->256 conv+shuffle, 540x960", "shuffle", 1, 540, 960, 64, 256),
    ("256->256 +bias+relu, 16x48x48", "relu", 16, 48, 48, 256, 256),
]


def layer_case(kind, n, h, w, c_in, c_out, gen):
    x = torch.randn(n, c_in, h, w, device="cuda", generator=gen).to(BF).contiguous(memory_format=CL)
    wt = (torch.randn(c_out, c_in, 3, 3, device="cuda", generator=gen) / (9 * c_in) ** 0.5).to(BF)
    b = (torch.randn(c_out, device="cuda", generator=gen) * 0.1).to(BF)
    wt2 = (torch.randn(c_out, c_in, 3, 3, device="cuda", generator=gen) / (9 * c_in) ** 0.5).to(BF)
    wcl, w2cl = wt.contiguous(memory_format=CL), wt2.contiguous(memory_format=CL)
    scale = 0.1
    if kind == "relu":
        fused = lambda: ops.sliced_conv3x3(x, wt, b, c_out, c_in, relu=True)
        eager = lambda x: F.relu(F.conv2d(x, wcl, b, padding=1))
    elif kind == "residual":
        fused = lambda: ops.sliced_conv3x3(x, wt, b, c_out, c_in, residual=x, res_scale=scale)
        eager = lambda x: x + scale * F.conv2d(x, wcl, b, padding=1)
    elif kind == "block":
        fused = lambda: ops.residual_block(x, wt, b, wt2, b, c_in, scale)
        eager = lambda x: x + scale * F.conv2d(F.relu(F.conv2d(x, wcl, b, padding=1)), w2cl, b, padding=1)
    else:
        fused = lambda: ops.conv3x3_pixel_shuffle(x, wt, b, c_out // 4, c_in, 2)
        eager = lambda x: F.pixel_shuffle(F.conv2d(x, wcl, b, padding=1), 2)
    conv_alone = lambda: F.conv2d(x, wcl, None, padding=1)
    convs = 2 if kind == "block" else 1
    return x, fused, eager, conv_alone, convs


def layer_rows(compile_too):
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, kind, n, h, w, c_in, c_out in LAYERS:
        x, fused, eager, conv_alone, convs = layer_case(kind, n, h, w, c_in, c_out, gen)
        with torch.no_grad():
            want = eager(x.float())
            err, eager_err = rel_err(fused(), want), rel_err(eager(x), want)
            assert err <= 1.5 * eager_err + 1e-3, f"{name}: fused error {err:.3g} vs eager {eager_err:.3g}"
            before = ops.cudnn_graph_stats()
            t = {"csd_fast": cuda_time_ms(fused), "eager": cuda_time_ms(lambda: eager(x)),
                 "conv_alone": convs * cuda_time_ms(conv_alone)}
            after = ops.cudnn_graph_stats()
            if compile_too:
                compiled = torch.compile(eager)
                compiled(x)
                t["compile"] = cuda_time_ms(lambda: compiled(x))
        path = "graph" if after["fallbacks"] == before["fallbacks"] else "ATen fallback"
        rows.append(dict(layer=name, ms=t, path=path, rel_err=err, eager_rel_err=eager_err,
                         tflops=tflops(n, h, w, c_in, c_out, t["csd_fast"]) * convs,
                         vs_conv_alone=t["csd_fast"] / t["conv_alone"]))
    return rows


# ---------------------------------------------------------------------------- whole network


def edsr_rows(compile_too, max_autotune):
    rows = []
    torch.manual_seed(0)
    model = csd_fast.EDSRCSD.from_preset("edsr", scale=4, backend="reference").cuda().eval()
    x = (torch.rand(1, 3, 270, 480, device="cuda") * 255).contiguous(memory_format=CL)
    bf16 = csd_fast.EDSRCSD.from_preset("edsr", scale=4, backend="reference").cuda().eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(BF, memory_format=CL)
    xb = x.to(BF)
    for width in (0.25, 1.0):
        with torch.no_grad():
            want = model(x, width)
            eager_err = rel_err(bf16(xb, width), want)
            t = {"eager bf16": cuda_time_ms(lambda: bf16(xb, width), warmup=2, iters=10)}
            bf16.backend = "fused"
            with ops.cached_weights():
                errs = {"fused bf16": rel_err(bf16(xb, width), want)}
                t["fused bf16"] = cuda_time_ms(lambda: bf16(xb, width), warmup=2, iters=10)
            # the whole forward replayed from a CUDA graph, as csd-fast eval/upscale run it
            graphs = GraphCache()
            with torch.inference_mode():
                graphed = lambda: graphs(lambda t: bf16(t, width), xb, width)  # noqa: E731
                graphed()  # first sight: eager; the second call captures
                errs["fused bf16 graph"] = rel_err(graphed(), want)
                t["fused bf16 graph"] = cuda_time_ms(graphed, warmup=2, iters=10)
            bf16.backend = "reference"
            model.backend = "fused"
            with torch.autocast("cuda", dtype=BF), ops.cached_weights():
                errs["fused autocast"] = rel_err(model(x, width), want)
                t["fused autocast"] = cuda_time_ms(lambda: model(x, width), warmup=2, iters=10)
            model.backend = "reference"
        for name, err in errs.items():
            assert err <= 1.5 * eager_err + 1e-3, f"w{width} {name}: error {err:.3g} vs eager {eager_err:.3g}"
        compile_s = {}
        modes = (["default"] + (["max-autotune"] if max_autotune else [])) if compile_too else []
        for mode in modes:
            t0 = time.time()
            compiled = torch.compile(lambda t, w=width: bf16(t, w),
                                     mode=None if mode == "default" else mode)
            with torch.no_grad():
                compiled(xb)
                compile_s[mode] = time.time() - t0
                t[f"compile {mode}"] = cuda_time_ms(lambda: compiled(xb), warmup=2, iters=10)
        best_fused = min(v for k, v in t.items() if k.startswith("fused"))
        rows.append(dict(width=width, ms=t, rel_err=errs, eager_rel_err=eager_err,
                         compile_s=compile_s,
                         speedup={k: v / best_fused for k, v in t.items() if not k.startswith("fused")}))
    return rows


# ---------------------------------------------------------------------------- contrastive


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
                         gbs=gbs, of_copy=gbs / copy_gbs))
    return rows


# ---------------------------------------------------------------------------- report


def print_tables(header, layers, nets, contrastive, copy_gbs):
    print(f"\n{header['gpu']}, torch {header['torch']}, CUDA {header['cuda']}, "
          f"cuDNN {header['cudnn']}\n")
    cols = ["csd_fast", "eager", "conv_alone", "compile"]
    print("| layer (bf16, channels-last) | " + " | ".join(f"{c} ms" for c in cols) +
          " | TF/s | csd_fast / conv alone | path |")
    print("|---|" + "---:|" * (len(cols) + 2) + "---|")
    for r in layers:
        ms = " | ".join(f"{r['ms'][c]:.3f}" if c in r["ms"] else "-" for c in cols)
        print(f"| {r['layer']} | {ms} | {r['tflops']:.0f} | {r['vs_conv_alone']:.2f} | {r['path']} |")
    print("\n| EDSR x4 1080p | " + " | ".join(f"{k} ms" for k in nets[0]["ms"]) + " | speedups |")
    print("|---|" + "---:|" * len(nets[0]["ms"]) + "---|")
    for r in nets:
        ms = " | ".join(f"{v:.2f}" for v in r["ms"].values())
        speed = ", ".join(f"{k} / fused {v:.2f}x" for k, v in r["speedup"].items())
        print(f"| width {r['width']} | {ms} | {speed} |")
    print(f"\ndevice-to-device copy: {copy_gbs:.0f} GB/s")
    for r in contrastive:
        print(f"{r['case']}: {r['ms']:.3f} ms, {r['gbs']:.0f} GB/s = {100 * r['of_copy']:.0f}% of copy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--max-autotune", action="store_true", help="also torch.compile max-autotune")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.backends.cudnn.benchmark = True
    header = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version(), build=csd_fast.build_info())
    layers = layer_rows(not args.no_compile)
    nets = edsr_rows(not args.no_compile, args.max_autotune)
    copy_gbs = copy_bandwidth()
    contrastive = contrastive_rows(copy_gbs)
    header["cudnn_graph_stats"] = ops.cudnn_graph_stats()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=header, layers=layers, networks=nets, contrastive=contrastive,
                           copy_gbs=copy_gbs), f, indent=1)
    print_tables(header, layers, nets, contrastive, copy_gbs)


if __name__ == "__main__":
    main()
