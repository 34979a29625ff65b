"""The csd-fast command line.

    csd-fast demo                      train a small teacher and CSD student on bundled
                                       photographs and compare them with bicubic

    csd-fast info                      what was compiled, torch, devices
    csd-fast smoke [--preset edsr ...] run the model at several widths, both backends,
                                       and report parameters, agreement and time
    csd-fast eval --data DIR ... --scale S [--checkpoint CKPT] ...
                                       PSNR/SSIM (Y channel, crop = scale) per dataset,
                                       the model beside bicubic
    csd-fast upscale IMAGE_OR_DIR ... -o OUT --checkpoint CKPT
                                       write upscaled PNGs
    csd-fast train --config run.yaml [KEY=VALUE ...] [--resume]
                                       teacher pre-training, joint CSD, student baseline

Exit status, for every command: 0 on success; 1 when the run itself failed or was stopped
(a non-finite training loss, backends that disagree in `smoke`, a failure of the machine
such as running out of memory or disk); 2 for a usage or input error (a bad flag, a bad
config key or value, a missing or unreadable file, an output that would replace a file),
the code argparse also uses for a bad flag. Errors are one line on stderr, naming the problem.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import EDSRCSD, PRESETS, build_info, load_checkpoint
from .demo import add_demo_parser
from .train.cli import add_train_parser

RUN_FAILED, USAGE_ERROR = 1, 2
# Exceptions that mean the input or the command line was wrong (exit 2); other RuntimeErrors
# and OSErrors mean the run failed (exit 1).
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
                NotADirectoryError, PermissionError)


def error(args: argparse.Namespace, message: object, code: int) -> int:
    print(f"csd-fast {args.command}: error: {message}", file=sys.stderr)
    return code


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
        return error(args, "--device cuda but no CUDA device is available", USAGE_ERROR)
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
        return error(args, f"backends disagree (max relative difference {worst:.2e})", RUN_FAILED)
    print("backends agree")
    return 0


def run_width(requested: float | None, model: EDSRCSD | None) -> tuple[float, str]:
    """The width to run at (--width, else the checkpoint's default_width, else 1) and a line
    saying where it came from: a student checkpoint run at the wrong width gives no error."""
    if requested is not None:
        return requested, f"width {requested:g}"
    stored = getattr(model, "default_width", None)
    if stored is not None:
        return stored, f"width {stored:g} (from the checkpoint; --width overrides)"
    return 1.0, "width 1 (the checkpoint records no width; --width picks another)"


def cmd_eval(args) -> int:
    from .evaluation import evaluate, format_table, write_reports

    model = None
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, map_location="cpu").float()
    scale = args.scale or (model.scale if model is not None else None)
    if scale is None:
        return error(args, "--scale is needed when no --checkpoint is given", USAGE_ERROR)
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
    return 0


def readable_only(plan: list[tuple[Path, Path]], skip_unreadable: bool) -> list[tuple[Path, Path]]:
    """The plan without unreadable inputs (each named in a warning), or the first one's error."""
    from .upscale import UnreadableImage, check_readable

    kept = []
    for source, target in plan:
        try:
            check_readable(source)
        except UnreadableImage as err:
            if not skip_unreadable:
                raise
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        kept.append((source, target))
    if not kept:
        raise ValueError(f"none of the {len(plan)} input image(s) is readable")
    return kept


def cmd_upscale(args) -> int:
    from .upscale import collect_inputs, plan_outputs

    # every refusal comes before any work: inputs, outputs, device, checkpoint, width, images
    plan = plan_outputs(collect_inputs(args.inputs), Path(args.output), args.overwrite)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    model = load_checkpoint(args.checkpoint, map_location="cpu").float().to(device).eval()
    width, width_note = run_width(args.width, model)
    model.channels(width)
    todo = readable_only(plan, args.skip_unreadable)
    print(f"x{model.scale}, {width_note}")
    written = upscale_all(todo, model, width, device, args)
    skipped = len(plan) - written
    skipped_note = f"; skipped {skipped} unreadable" if skipped else ""
    print(f"wrote {written} image(s) to {args.output}{skipped_note}")
    return 0


def upscale_all(todo: list[tuple[Path, Path]], model: EDSRCSD, width: float, device: torch.device,
                args: argparse.Namespace) -> int:
    """Upscale each (source, target) pair, saying what was written where; the count written."""
    from tqdm import tqdm

    from .evaluation import DTYPES
    from .upscale import UnreadableImage, read_picture, upscale_picture, write_picture

    written = 0
    bar = tqdm(todo, desc=f"x{model.scale} width {width:g}", unit="img")
    try:
        for source, target in bar:
            try:
                picture = read_picture(source)
            except UnreadableImage as err:  # damage past what check_readable could see
                if not args.skip_unreadable:
                    raise
                tqdm.write(f"warning: skipped {err}", file=sys.stderr)
                continue
            out = upscale_picture(model, picture, width, device, ensemble=args.self_ensemble,
                                  tile=args.tile, overlap=args.tile_overlap,
                                  autocast_dtype=DTYPES[args.dtype])
            write_picture(target, out)
            written += 1
            tqdm.write(f"wrote {target} (from {source})")
    finally:
        bar.close()  # an error's line comes after the bar, not on it
    return written


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def unit_width(text: str) -> float:
    (value,) = parse_widths(text)
    return value


WIDTH_HELP = ("width ratio r in (0, 1]; default: the width the checkpoint records (a CSD run's "
              "best.safetensors records its student's), else 1")


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

    ev = sub.add_parser("eval", help="PSNR/SSIM on benchmark folders, beside bicubic")
    ev.add_argument("--data", nargs="+", required=True, help="dataset folders (any supported layout)")
    ev.add_argument("--scale", type=int, choices=[2, 3, 4], help="default: the checkpoint's")
    ev.add_argument("--checkpoint", help="omit for the bicubic rows alone")
    ev.add_argument("--width", type=unit_width, help=WIDTH_HELP)
    ev.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble")
    ev.add_argument("--tile", type=positive_int, help="LR tile size for large images")
    ev.add_argument("--tile-overlap", type=int, help="LR context per tile side (default: exact)")
    ev.add_argument("--save-images", help="folder for the SR PNGs")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ev.add_argument("--rgb", action="store_true", help="RGB metrics instead of the Y channel")
    ev.add_argument("--json", default="eval_results.json", help="where to write all numbers")
    ev.add_argument("--csv", default="eval_results.csv", help="where to write per-image rows")
    ev.set_defaults(func=cmd_eval)

    up = sub.add_parser("upscale", help="upscale image files to PNG")
    up.add_argument("inputs", nargs="+", help="image files or folders of images")
    up.add_argument("-o", "--output", required=True,
                    help="output folder; each image is written as <name>.png")
    up.add_argument("--checkpoint", required=True, help="any layout csd_fast.load_checkpoint reads")
    up.add_argument("--width", type=unit_width, help=WIDTH_HELP)
    up.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble")
    up.add_argument("--tile", type=positive_int, help="LR tile size for large images")
    up.add_argument("--tile-overlap", type=int, help="LR context per tile side (default: exact)")
    up.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    up.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    up.add_argument("--skip-unreadable", action="store_true", help="warn and go on past broken files")
    up.add_argument("--overwrite", action="store_true",
                    help="replace output files that already exist (an input image is never replaced)")
    up.set_defaults(func=cmd_upscale)

    add_train_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status follows the module docstring's convention."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USAGE_ERRORS as err:
        return error(args, err, USAGE_ERROR)
    except (RuntimeError, OSError) as err:  # e.g. a non-finite loss, out of memory, a full disk
        return error(args, err, RUN_FAILED)


if __name__ == "__main__":
    sys.exit(main())
