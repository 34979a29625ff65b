"""Print what was compiled (CPU level, CUDA archs, the torch it was built against), the
torch that runs it and the devices, as JSON. Exit status 1 when the kernels cannot run here."""
from __future__ import annotations

import argparse
import json

HELP = "what was compiled, torch, devices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> None:
    import torch

    from .._extension import build_info

    info = dict(csd_fast=build_info(), torch=torch.__version__,
                cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                cpu_threads=torch.get_num_threads())
    print(json.dumps(info, indent=2))
    if info["csd_fast"]["error"] is not None:
        raise RuntimeError(f"the compiled kernels cannot run here: {info['csd_fast']['error']}")
