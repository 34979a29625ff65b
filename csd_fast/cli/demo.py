"""Trains a small EDSR x2 teacher, then a width-0.5 student with CSD and the same student
alone, on photographs bundled with scikit-image (or --data DIR), and reports held-out
PSNR/SSIM beside bicubic, with the exported slim student's size and CPU time. Takes minutes
on a CPU."""
from __future__ import annotations

import argparse
import dataclasses

from ..demo.settings import DemoSettings

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

    run_demo(DemoSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings)}))
