"""Write the student of a CSD checkpoint as a standalone slim EDSR: int(n_feats * R) features
holding the weight prefixes the student runs, in this package's format, EDSR-PyTorch's or
BasicSR's state-dict layout, or as ONNX (`pip install csd_fast[export]`). See docs/export.md."""
from __future__ import annotations

import argparse
import json
import sys

from ._args import unit_width

HELP = "write the student as a standalone slim network (csd_fast, EDSR-PyTorch, BasicSR, ONNX)"
FORMATS = ("csd_fast", "edsr_pytorch", "basicsr", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="any layout csd_fast.load_checkpoint reads")
    parser.add_argument("--width", type=unit_width,
                        help="the student's width ratio; default: the width the checkpoint records")
    parser.add_argument("--format", choices=FORMATS, default="csd_fast")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> None:
    from ..export import export_checkpoint

    written = export_checkpoint(args.checkpoint, args.width, args.format, args.output,
                                overwrite=args.overwrite)
    print(json.dumps(written, indent=2, default=str))
    for line in written["warnings"]:
        print(f"csd-fast export: warning: {line}", file=sys.stderr)
    missing = written.get("load_overrides") or {}
    if missing:  # the foreign layouts cannot hold these; a loader's guess would be wrong
        pins = ", ".join(f"{k}={v!r}" for k, v in missing.items())
        print(f"note: a {args.format} file does not store {', '.join(missing)}: load it with "
              f"csd_fast.load_checkpoint(path, {pins}), or export --format csd_fast for eval and "
              "upscale", file=sys.stderr)
