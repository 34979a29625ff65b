"""Upscale image files, videos, or folders of them with a checkpoint: each image is written as
<output>/<name>.png, each video as <output>/<name>.<its suffix> (frame timestamps kept,
audio and subtitles copied). Images and videos are told apart by content. Existing outputs
are replaced only with --overwrite, an input never; every check (inputs, outputs, device,
checkpoint, width, images, the start of each video) comes before any work."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import add_inference_options, positive_int, run_width, warn_if_untrained

HELP = "upscale image files to PNG, and videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image or video files, or folders of them")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder; each image is written as <name>.png, each video as "
                             "<name> with its own suffix (or --container's)")
    parser.add_argument("--checkpoint", required=True, help="any layout csd_fast.load_checkpoint reads")
    add_inference_options(parser)
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="warn and go on past broken files (and a video's broken packets)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (an input is never replaced)")
    video = parser.add_argument_group("video (needs PyAV: pip install 'csd_fast[video]')")
    video.add_argument("--codec", default="libx264",
                       help="FFmpeg video encoder (default libx264; ffv1: lossless RGB)")
    video.add_argument("--crf", type=int, help="quality for libx264/libx265/libvpx-vp9/AV1: lower is "
                                               "better (encoder default: 23 for libx264)")
    video.add_argument("--container", help="output suffix for videos, e.g. mkv (default: the input's)")
    video.add_argument("--batch", type=positive_int, default=4, help="video frames per forward (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    from .._device import resolve_device
    from ..checkpoint import load_checkpoint
    from ..data import IMAGE_SUFFIXES
    from ..upscale import collect_inputs, plan_outputs
    from ..video import VIDEO_SUFFIXES

    kinds = _Kinds(args.container)
    plan = plan_outputs(collect_inputs(args.inputs, IMAGE_SUFFIXES + VIDEO_SUFFIXES, kinds.output_name),
                        Path(args.output), args.overwrite, checkpoint=Path(args.checkpoint),
                        output_name=kinds.output_name)
    device = resolve_device(args.device)
    if any(kinds.video.values()):
        from ..video.writer import check_encoder

        for suffix in sorted({target.suffix for source, target in plan if kinds.video[source]}):
            check_encoder(suffix, args.codec, args.crf)
    todo = _readable_only(plan, args.skip_unreadable, kinds)
    model = load_checkpoint(args.checkpoint, map_location="cpu").float().to(device).eval()
    width, width_note = run_width(args.width, model)
    model.channels(width)
    print(f"x{model.scale}, {width_note}")
    warn_if_untrained("upscale", model, width)
    images = [pair for pair in todo if not kinds.video[pair[0]]]
    videos = [pair for pair in todo if kinds.video[pair[0]]]
    written = _upscale_all(images, model, width, device, args) if images else 0
    written_videos, packets = _upscale_videos(videos, model, width, device, args)
    skipped = len(plan) - written - written_videos
    skipped_note = f"; skipped {skipped} unreadable" if skipped else ""
    if packets:
        skipped_note += f"; skipped {packets} unreadable video packet(s)"
    videos_note = f" and {written_videos} video(s)" if any(kinds.video.values()) else ""
    print(f"wrote {written} image(s){videos_note} to {args.output}{skipped_note}")


class _Kinds:
    """Which inputs are videos (by content, asked once per file) and what each is written as."""

    def __init__(self, container: str | None):
        self.container = container
        self.video: dict[Path, bool] = {}

    def output_name(self, path: Path) -> str:
        from ..upscale import png_name
        from ..video import is_video, video_output_name

        if path not in self.video:
            self.video[path] = is_video(path)
        return video_output_name(path, self.container) if self.video[path] else png_name(path)


def _readable_only(plan: list[tuple[Path, Path]], skip_unreadable: bool,
                   kinds: _Kinds) -> list[tuple[Path, Path]]:
    """The plan without unreadable inputs (each named in a warning), or the first one's error."""
    from ..upscale import UnreadableImage, check_readable
    from ..video import UnreadableVideo, check_video

    kept = []
    for source, target in plan:
        try:
            (check_video if kinds.video[source] else check_readable)(source)
        except (UnreadableImage, UnreadableVideo) as err:
            if not skip_unreadable:
                raise
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        kept.append((source, target))
    if not kept:
        what = "input(s)" if any(kinds.video.values()) else "input image(s)"
        raise ValueError(f"none of the {len(plan)} {what} is readable")
    return kept


def _options(args: argparse.Namespace, device) -> dict:
    """csd_fast.inference.upscale's options from the command line (--dtype auto resolved
    for this device once, then cached)."""
    from .._dtype import resolve_dtype

    return dict(ensemble=args.self_ensemble, tile=args.tile, overlap=args.tile_overlap,
                autocast_dtype=resolve_dtype(args.dtype, device), cuda_graphs=args.cuda_graphs)


def _upscale_all(todo, model, width: float, device, args: argparse.Namespace) -> int:
    """Upscale each (source, target) pair, saying what was written where; the count written."""
    from tqdm import tqdm

    from ..upscale import UnreadableImage, read_picture, upscale_picture, write_picture

    written = 0
    bar = tqdm(todo, desc=f"x{model.scale} width {width:g}", unit="img", disable=args.quiet)
    try:
        for source, target in bar:
            try:
                picture = read_picture(source)
            except UnreadableImage as err:  # damage past what check_readable could see
                if not args.skip_unreadable:
                    raise
                tqdm.write(f"warning: skipped {err}", file=sys.stderr)
                continue
            options = _options(args, device)
            if picture.bitdepth > 8 and args.dtype == "auto":
                options["autocast_dtype"] = None  # bf16's 8-bit mantissa would lose the 16-bit levels
            out = upscale_picture(model, picture, width, device, **options)
            write_picture(target, out)
            written += 1
            tqdm.write(f"wrote {target} (from {source})")
    finally:
        bar.close()  # an error's line comes after the bar, not on it
    return written


def _upscale_videos(todo, model, width: float, device, args: argparse.Namespace) -> tuple[int, int]:
    """Upscale each (source, target) video, one summary line each; (videos written,
    packets or frames skipped in them)."""
    from ..video import UnreadableVideo, upscale_video

    written = skipped = 0
    for source, target in todo:
        try:
            summary = upscale_video(model, source, target, width, device=device, batch=args.batch,
                                    codec=args.codec, crf=args.crf, overwrite=args.overwrite,
                                    skip_unreadable=args.skip_unreadable, progress=not args.quiet,
                                    **_options(args, device))
        except UnreadableVideo as err:
            if not args.skip_unreadable:
                raise
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        print(summary.line())
        written += 1
        skipped += summary.skipped
    return written, skipped
