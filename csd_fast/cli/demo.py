"""Trains a small EDSR x2 teacher, then a width-0.5 student with CSD and the same student
alone, on photographs bundled with scikit-image (or --data DIR), and reports held-out
PSNR/SSIM beside bicubic, with the exported slim student's size and CPU time. Takes minutes
on a CPU."""
from __future__ import annotations

import argparse
import dataclasses

from ..demo.settings import REPORT_FILES, DemoSettings

HELP = "train a small CSD model on bundled photographs and compare it with bicubic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(DemoSettings):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=field.metadata["help"])
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        extra = {"choices": ("auto", "cpu", "cuda")} if field.name == "device" else {}
        parser.add_argument(flag, type=kind, default=field.default, help=field.metadata["help"],
                            metavar="DIR" if field.name in ("data", "output") else None, **extra)


def run(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    check_output_folder(args)
    run_demo(DemoSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings)}))


def check_output_folder(args: argparse.Namespace) -> None:
    """--output is a folder (or absent); none of the demo's files there is one of its input
    images, or an existing file unless --overwrite; and --data does not lie inside the runs/
    folder that --overwrite removes."""
    from pathlib import Path

    from .._outputs import check_folder, check_outputs

    out = Path(args.output)
    check_folder("--output", out)
    inputs = []
    if args.data is not None and Path(args.data).is_dir():
        data = Path(args.data)
        inputs = [("the input image", f) for f in sorted(data.iterdir()) if f.is_file()]
        runs = (out / "runs").resolve()
        if data.resolve() == runs or runs in data.resolve().parents:
            raise ValueError(f"--data {data} lies inside {out / 'runs'}, which the demo replaces; "
                             "move the images or choose another --output")
    check_outputs([("--output", out / name) for name in REPORT_FILES], inputs, overwrite=args.overwrite)
