"""The csd-fast command line.

    csd-fast info                      what was compiled, torch, devices
    csd-fast smoke [--preset edsr ...] run the model at several widths, both backends,
                                       and report parameters, agreement and time
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from . import EDSRCSD, PRESETS, build_info, load_checkpoint


def cmd_info(args) -> int:
    info = dict(csd_fast=build_info(), torch=torch.__version__,
                cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                cpu_threads=torch.get_num_threads())
    print(json.dumps(info, indent=2))
    return 0 if info["csd_fast"]["error"] is None else 1


def parse_widths(text: str) -> list[float]:
    try:
        widths = [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated numbers, got {text!r}")
    if not all(0 < w <= 1 for w in widths):
        raise argparse.ArgumentTypeError(f"every width must be in (0, 1], got {text!r}")
    return widths


def timed(fn, device: torch.device, repeats: int) -> tuple[torch.Tensor, float]:
    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def cmd_smoke(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, map_location=device).float()
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model = EDSRCSD.from_preset(args.preset, scale=args.scale).to(device)
        source = f"preset {args.preset} x{args.scale}, random weights"
    model.eval()
    x = torch.rand(1, 3, args.size, args.size, device=device, generator=None) * model.rgb_range
    print(f"EDSRCSD ({source}) on a {args.size}x{args.size} input, {device}")
    print(f"{'width':>6} {'channels':>8} {'params':>10} {'reference ms':>13} {'fused ms':>9} {'max |diff|':>11}")
    worst = 0.0
    with torch.inference_mode():
        for width in args.widths:
            model.backend = "reference"
            ref, t_ref = timed(lambda: model(x, width), device, args.repeats)
            model.backend = "fused"
            fused, t_fused = timed(lambda: model(x, width), device, args.repeats)
            diff = (fused - ref).abs().max().item()
            worst = max(worst, diff / model.rgb_range)
            print(f"{width:>6g} {model.channels(width):>8d} {model.num_parameters(width) / 1e6:>9.2f}M "
                  f"{t_ref * 1e3:>13.1f} {t_fused * 1e3:>9.1f} {diff:>11.2e}")
    if worst > 1e-4:
        print(f"error: backends disagree (max relative difference {worst:.2e})", file=sys.stderr)
        return 1
    print("backends agree")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csd-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what was compiled, torch, devices").set_defaults(func=cmd_info)
    smoke = sub.add_parser("smoke", help="run the model at several widths on both backends")
    smoke.add_argument("--preset", choices=sorted(PRESETS), default="edsr-baseline")
    smoke.add_argument("--scale", type=int, choices=[2, 3, 4], default=4)
    smoke.add_argument("--checkpoint", help="any checkpoint layout csd_fast.load_checkpoint reads")
    smoke.add_argument("--widths", type=parse_widths, default=[1.0, 0.5, 0.25])
    smoke.add_argument("--size", type=int, default=64, help="input height and width (LR pixels)")
    smoke.add_argument("--repeats", type=int, default=3)
    smoke.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    smoke.set_defaults(func=cmd_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
