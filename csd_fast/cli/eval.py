"""PSNR/SSIM of a checkpoint, or of bicubic alone, on benchmark folders in any supported
layout (<set>/HR + LR_bicubic/X4, GTmod12 + LRbicx4, SelfExSR, DIV2K, or a plain folder of HR
images whose LR is made with MATLAB's bicubic). One table per scale, the model beside
bicubic; all numbers in --json, per-image rows in --csv.

The checkpoint may be any layout csd_fast.load_checkpoint reads, or an ONNX file from
`csd-fast export --format onnx`, which runs through onnxruntime on the CPU (one width; no
--width, float32). Existing --json, --csv and --save-images files are replaced only with
--overwrite, an input never; every check (outputs, checkpoint, folders, images) comes
before any inference."""
from __future__ import annotations

import argparse

from ._args import add_inference_options, run_width, warn_if_untrained

HELP = "PSNR/SSIM on benchmark folders, beside bicubic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (any supported layout)")
    parser.add_argument("--scale", type=int, choices=[2, 3, 4], help="default: the checkpoint's")
    parser.add_argument("--checkpoint", help="omit for the bicubic rows alone; a .onnx file runs in onnxruntime")
    add_inference_options(parser)
    # a score is reported in float32 unless asked otherwise (upscale's default is auto)
    parser.set_defaults(dtype="float32")
    parser.add_argument("--save-images", help="folder for the SR PNGs (<folder>/<set>/<image>.png)")
    parser.add_argument("--rgb", action="store_true", help="RGB metrics instead of the Y channel")
    parser.add_argument("--json", default="eval_results.json", help="where to write all numbers ('' for none)")
    parser.add_argument("--csv", default="eval_results.csv", help="where to write per-image rows ('' for none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --json, --csv and --save-images files (an input is never replaced)")


def run(args: argparse.Namespace) -> None:
    from .._outputs import check_folder, check_outputs
    from ..evaluation import (check_images, evaluate, format_table, input_images, open_datasets,
                              saved_image_paths, write_reports)

    if args.checkpoint is None and args.scale is None:
        raise ValueError("--scale is needed when no --checkpoint is given")
    reports = [("--json", args.json), ("--csv", args.csv)]
    checkpoint = [("the checkpoint", args.checkpoint)]
    # before the checkpoint is read; whether outputs exist is said below, once inputs are known
    check_outputs(reports, checkpoint, overwrite=True)
    if args.save_images:
        check_folder("--save-images", args.save_images)
    model = None if args.scale else _load(args.checkpoint)  # only the checkpoint knows the scale
    scale = args.scale or model.scale
    datasets = open_datasets(args.data, scale)
    saved = saved_image_paths(datasets, args.save_images) if args.save_images else []
    inputs = checkpoint + [("the input image", path) for path in input_images(datasets)]
    check_outputs(reports + [("--save-images", path) for path in saved], inputs, overwrite=args.overwrite)
    check_images(datasets)
    if model is None and args.checkpoint:
        model = _load(args.checkpoint)
    width, label, device = _run_settings(args, model)
    results = evaluate(model, datasets, scale, width=width, ensemble=args.self_ensemble,
                       tile=args.tile, overlap=args.tile_overlap, device=device,
                       dtype=args.dtype, y_channel=not args.rgb, save_images=args.save_images,
                       cuda_graphs=args.cuda_graphs)
    print(f"x{scale}, {'RGB' if args.rgb else 'Y channel'}, crop {scale}")
    print(format_table(results, label + (" +ensemble" if args.self_ensemble else "")))
    meta = dict(checkpoint=args.checkpoint, scale=scale, width=width,
                self_ensemble=args.self_ensemble, tile=args.tile, y_channel=not args.rgb,
                dtype=args.dtype, device=args.device,
                runtime="onnxruntime" if _is_onnx(model) else "pytorch")
    write_reports(results, args.json, args.csv, meta)


def _load(path: str):
    from ..checkpoint import load_checkpoint
    from ..checkpoint.io import is_onnx_file

    if is_onnx_file(path):
        from ..export.onnx_session import OnnxModel
        return OnnxModel(path)
    return load_checkpoint(path, map_location="cpu").float()


def _is_onnx(model) -> bool:
    from ..export.onnx_session import OnnxModel
    return isinstance(model, OnnxModel)


def _run_settings(args: argparse.Namespace, model) -> tuple[float, str, str]:
    """(width, the model row's label, device), each said or warned about once."""
    if model is None:
        return 1.0, "bicubic", args.device
    if not _is_onnx(model):
        width, note = run_width(args.width, model)
        print(note)
        warn_if_untrained("eval", model, width)
        return width, f"width {width:g}", args.device
    model.channels(1.0 if args.width is None else args.width)  # one width: --width 1 or none
    if args.dtype not in ("float32", "auto"):
        raise ValueError(f"--dtype {args.dtype}: an ONNX file runs in the float32 it was exported in")
    if args.tile and args.tile_overlap is None and model.n_resblocks is None:
        raise ValueError(f"--tile: {args.checkpoint} does not record its depth, so the exact overlap is "
                         "unknown; give --tile-overlap too")
    print(f"{args.checkpoint}: ONNX, exported at width {model.exported_width:g}, run whole by onnxruntime on the CPU")
    return 1.0, f"ONNX (width {model.exported_width:g})", "cpu" if args.device == "auto" else args.device
