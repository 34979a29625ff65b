"""Argument types and option groups that several commands share."""
from __future__ import annotations

import argparse
import sys

WIDTH_HELP = ("width ratio r in (0, 1]; default: the width the checkpoint records (a CSD run's "
              "best.safetensors records its student's), else 1")


def parse_widths(text: str) -> list[float]:
    try:
        widths = [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated numbers, got {text!r}")
    if not all(0 < w <= 1 for w in widths):
        raise argparse.ArgumentTypeError(f"every width must be in (0, 1], got {text!r}")
    return widths


def unit_width(text: str) -> float:
    (value,) = parse_widths(text)
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N, or auto (CUDA when a GPU is visible; default)")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The options of running a model over images: width, ensemble, tiles, device, precision."""
    parser.add_argument("--width", type=unit_width, help=WIDTH_HELP)
    parser.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble")
    parser.add_argument("--tile", type=positive_int, help="LR tile size for large images")
    parser.add_argument("--tile-overlap", type=int, help="LR context per tile side (default: exact)")
    add_device(parser)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="compute precision (autocast; default: %(default)s). auto: bfloat16 "
                             "on a GPU that has it and on a CPU with bf16 instructions where it "
                             "measures faster, else float32")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="on CUDA, run every forward eagerly instead of replaying a "
                             "captured CUDA graph per input size")


def run_width(requested: float | None, model) -> tuple[float, str]:
    """The width to run at (--width, else the checkpoint's default_width, else 1) and a line
    saying where it came from: a student checkpoint run at the wrong width gives no error."""
    if requested is not None:
        return requested, f"width {requested:g}"
    stored = getattr(model, "default_width", None)
    if stored is not None:
        return stored, f"width {stored:g} (from the checkpoint; --width overrides)"
    return 1.0, "width 1 (the checkpoint records no width; --width picks another)"


def warn_if_untrained(command: str, model, width: float) -> None:
    """One warning line when the checkpoint records the widths it was trained at and `width` is
    none of them: a CSD student run at another width scores far below bicubic, silently."""
    from ..checkpoint.io import untrained_width

    line = untrained_width(model, width)
    if line is not None:
        print(f"csd-fast {command}: warning: {line}", file=sys.stderr)
