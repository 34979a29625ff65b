"""Build the model (random weights, or a checkpoint's), run it at each width with both
backends, check that they agree, and print parameter counts and times. Exit status 1 when
the backends disagree."""
from __future__ import annotations

import argparse
import time

from ..train.config import PRESET_NAMES
from ._args import add_device, parse_widths

HELP = "run the model at several widths on both backends"
AGREEMENT = 1e-4  # largest difference between the backends, relative to rgb_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESET_NAMES), default="edsr-baseline")
    parser.add_argument("--scale", type=int, choices=[2, 3, 4], default=4)
    parser.add_argument("--checkpoint", help="any checkpoint layout csd_fast.load_checkpoint reads")
    parser.add_argument("--widths", type=parse_widths, default=[1.0, 0.5, 0.25])
    parser.add_argument("--size", type=int, default=64, help="input height and width (LR pixels)")
    parser.add_argument("--repeats", type=int, default=3)
    add_device(parser)


def run(args: argparse.Namespace) -> None:
    import torch

    from .._device import resolve_device
    from ..archs import EDSRCSD
    from ..checkpoint import load_checkpoint

    device = resolve_device(args.device)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, map_location=device).float()
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model = EDSRCSD.from_preset(args.preset, scale=args.scale).to(device)
        source = f"preset {args.preset} x{args.scale}, random weights"
    model.eval()
    x = model.to_model_range(torch.rand(1, 3, args.size, args.size, device=device) * 255)
    print(f"EDSRCSD ({source}) on a {args.size}x{args.size} input, {device}")
    print(f"{'width':>6} {'channels':>8} {'params':>10} {'reference ms':>13} {'fused ms':>9} {'max |diff|':>11}")
    worst = 0.0
    with torch.inference_mode():
        for width in args.widths:
            model.backend = "reference"
            ref, t_ref = _timed(lambda: model(x, width), device, args.repeats)
            model.backend = "fused"
            fused, t_fused = _timed(lambda: model(x, width), device, args.repeats)
            diff = (fused - ref).abs().max().item()
            worst = max(worst, diff / model.rgb_range)
            print(f"{width:>6g} {model.channels(width):>8d} {model.num_parameters(width) / 1e6:>9.2f}M "
                  f"{t_ref * 1e3:>13.1f} {t_fused * 1e3:>9.1f} {diff:>11.2e}")
    if worst > AGREEMENT:
        raise RuntimeError(f"backends disagree (max relative difference {worst:.2e})")
    print("backends agree")


def _timed(fn, device, repeats: int):
    import torch

    out = fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats
