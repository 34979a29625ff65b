"""PSNR/SSIM of a checkpoint, or of bicubic alone, on benchmark folders in any supported
layout (<set>/HR + LR_bicubic/X4, GTmod12 + LRbicx4, SelfExSR, DIV2K, or a plain folder of HR
images whose LR is made with MATLAB's bicubic). One table per scale, the model beside
bicubic; all numbers in --json, per-image rows in --csv."""
from __future__ import annotations

import argparse

from ._args import add_inference_options, run_width

HELP = "PSNR/SSIM on benchmark folders, beside bicubic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (any supported layout)")
    parser.add_argument("--scale", type=int, choices=[2, 3, 4], help="default: the checkpoint's")
    parser.add_argument("--checkpoint", help="omit for the bicubic rows alone")
    add_inference_options(parser)
    parser.add_argument("--save-images", help="folder for the SR PNGs")
    parser.add_argument("--rgb", action="store_true", help="RGB metrics instead of the Y channel")
    parser.add_argument("--json", default="eval_results.json", help="where to write all numbers")
    parser.add_argument("--csv", default="eval_results.csv", help="where to write per-image rows")


def run(args: argparse.Namespace) -> None:
    from ..checkpoint import load_checkpoint
    from ..evaluation import evaluate, format_table, write_reports

    model = None
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, map_location="cpu").float()
    scale = args.scale or (model.scale if model is not None else None)
    if scale is None:
        raise ValueError("--scale is needed when no --checkpoint is given")
    width, width_note = run_width(args.width, model)
    if model is not None:
        print(width_note)
    results = evaluate(model, args.data, scale, width=width, ensemble=args.self_ensemble,
                       tile=args.tile, overlap=args.tile_overlap, device=args.device,
                       dtype=args.dtype, y_channel=not args.rgb, save_images=args.save_images)
    label = f"width {width:g}" + (" +ensemble" if args.self_ensemble else "")
    print(f"x{scale}, {'RGB' if args.rgb else 'Y channel'}, crop {scale}")
    print(format_table(results, label))
    meta = dict(checkpoint=args.checkpoint, scale=scale, width=width,
                self_ensemble=args.self_ensemble, tile=args.tile, y_channel=not args.rgb,
                dtype=args.dtype, device=args.device)
    write_reports(results, args.json, args.csv, meta)
