"""Upscale image files (or folders of them) with a checkpoint and write each as
<output>/<name>.png. Existing outputs are replaced only with --overwrite, an input never;
every check (inputs, outputs, device, checkpoint, width, images) comes before any work."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import add_inference_options, run_width, warn_if_untrained

HELP = "upscale image files to PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder; each image is written as <name>.png")
    parser.add_argument("--checkpoint", required=True, help="any layout csd_fast.load_checkpoint reads")
    add_inference_options(parser)
    parser.add_argument("--skip-unreadable", action="store_true", help="warn and go on past broken files")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (an input image is never replaced)")


def run(args: argparse.Namespace) -> None:
    from .._device import resolve_device
    from ..checkpoint import load_checkpoint
    from ..upscale import collect_inputs, plan_outputs

    plan = plan_outputs(collect_inputs(args.inputs), Path(args.output), args.overwrite,
                        checkpoint=Path(args.checkpoint))
    device = resolve_device(args.device)
    todo = _readable_only(plan, args.skip_unreadable)
    model = load_checkpoint(args.checkpoint, map_location="cpu").float().to(device).eval()
    width, width_note = run_width(args.width, model)
    model.channels(width)
    print(f"x{model.scale}, {width_note}")
    warn_if_untrained("upscale", model, width)
    written = _upscale_all(todo, model, width, device, args)
    skipped = len(plan) - written
    skipped_note = f"; skipped {skipped} unreadable" if skipped else ""
    print(f"wrote {written} image(s) to {args.output}{skipped_note}")


def _readable_only(plan: list[tuple[Path, Path]], skip_unreadable: bool) -> list[tuple[Path, Path]]:
    """The plan without unreadable inputs (each named in a warning), or the first one's error."""
    from ..upscale import UnreadableImage, check_readable

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


def _upscale_all(todo, model, width: float, device, args: argparse.Namespace) -> int:
    """Upscale each (source, target) pair, saying what was written where; the count written."""
    from tqdm import tqdm

    from .._dtype import resolve_dtype
    from ..upscale import UnreadableImage, read_picture, upscale_picture, write_picture

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
                                  autocast_dtype=resolve_dtype(args.dtype, device), cuda_graphs=args.cuda_graphs)
            write_picture(target, out)
            written += 1
            tqdm.write(f"wrote {target} (from {source})")
    finally:
        bar.close()  # an error's line comes after the bar, not on it
    return written
