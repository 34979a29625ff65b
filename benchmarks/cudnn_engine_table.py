"""The cuDNN engine each graph of EDSR x4 gets on an H200 and an A100, asked without a
GPU (csd_fast.ops.cudnn_engines): the table in docs/kernels.md.

    python benchmarks/cudnn_engine_table.py [--dtype bf16|fp16]
"""
from __future__ import annotations

import argparse

import torch

from csd_fast.ops import cudnn_engines

CASES = [  # (n_feats x width, batch, LR height, LR width, training)
    (256, 1.0, 1, 270, 480, False),
    (256, 0.25, 1, 270, 480, False),
    (256, 1.0, 16, 48, 48, True),
    (256, 0.25, 16, 48, 48, True),
    (256, 1.0, 1, 540, 960, False),   # a 3840x2160 output
    (256, 0.3, 1, 270, 480, False),   # 76 channels: routed to ATen
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    devices = sorted(cudnn_engines.DEVICES, reverse=True)
    print(f"| graph ({args.dtype}, EDSR x4) | shape | " +
          " | ".join(f"{d} engine | workspace" for d in devices) + " |")
    print("|---|---|" + "---|---|" * len(devices))
    for n_feats, width, batch, h, w, training in CASES:
        for g in cudnn_engines.model_graphs(n_feats, width, [2, 2], batch, h, w, training):
            cells = []
            for device in devices:
                choice = cudnn_engines.plan(device, g, dtype)
                if choice.aten:
                    cells += ["ATen", ""]
                    continue
                if choice.error:
                    cells += ["none", ""]
                    continue
                engine = choice.engine.split("_")[0]
                if choice.runtime_compiled:
                    engine = f"run-time compiled ({choice.engine.replace('|', ', ')})"
                    cells += [engine, "at run time"]
                else:
                    cells += [engine, f"{choice.workspace:,} B"]
            print(f"| {g.name} ({g.epilogue}) | {g.n}x{g.c_in}->{g.k_out} at {g.h}x{g.w} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
