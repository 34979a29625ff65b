"""upscale_video: one video file in, its upscaled copy out, written atomically."""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .._atomic import atomic_target
from .._outputs import check_outputs
from ._av import import_av
from .pipeline import upscale_items
from .probe import open_video
from .reader import ReadStats, Stamp, read_items
from .writer import DEFAULT_CODEC, VideoWriter


@dataclass
class VideoSummary:
    source: Path
    target: Path
    frames: int
    skipped: int  # packets that did not decode, or a read error that ended the file (skip_unreadable)
    size: tuple[int, int]  # output width, height
    copied_streams: int
    seconds: float

    def line(self) -> str:
        w, h = self.size
        skipped = f", skipped {self.skipped} unreadable" if self.skipped else ""
        copied = f", {self.copied_streams} audio/subtitle stream(s) copied" if self.copied_streams else ""
        fps = self.frames / self.seconds if self.seconds > 0 else float("inf")
        return (f"wrote {self.target} (from {self.source}): {self.frames} frames {w}x{h}, "
                f"{fps:.1f} frames/s{copied}{skipped}")


def upscale_video(model, source, target, width: float | None = None, *, device=None, batch: int = 4,
                  codec: str = DEFAULT_CODEC, crf: int | None = None, overwrite: bool = False,
                  skip_unreadable: bool = False, progress: bool = True, **options) -> VideoSummary:
    """Upscale every frame of the video `source` into the video `target` (format by its
    suffix), keeping each frame's timestamp and copying audio and subtitle streams.

    The file appears under `target` only once complete. An existing target is replaced only
    with overwrite=True; the source never. A packet that does not decode raises
    UnreadableVideo (a ValueError) unless skip_unreadable. width, device, batch and options
    (tile, ensemble, autocast_dtype, cuda_graphs) as in upscale_frames."""
    source, target = Path(source), Path(target)
    check_outputs([("target", target)], [("the input video", source)], overwrite=overwrite,
                  overwrite_flag="--overwrite (overwrite=True)")
    start = time.perf_counter()
    stats = ReadStats()
    try:
        size, copied = _convert(model, source, target, width, device, batch, codec, crf,
                                skip_unreadable, progress, stats, options)
    except import_av().FFmpegError as err:  # the reader turns its own into UnreadableVideo
        raise RuntimeError(f"{target}: FFmpeg could not write the video ({err})") from err
    return VideoSummary(source, target, stats.frames, stats.skipped, size, copied,
                        time.perf_counter() - start)


def _convert(model, source: Path, target: Path, width, device, batch, codec, crf, skip_unreadable,
             progress, stats, options) -> tuple[tuple[int, int], int]:
    """upscale_video's work: (output size, audio/subtitle streams copied)."""
    from tqdm import tqdm

    with open_video(source) as container:
        src = container.streams.video[0]
        scale = model.scale
        size = (src.codec_context.width * scale, src.codec_context.height * scale)
        with atomic_target(target) as tmp:
            writer = VideoWriter(tmp, container, *size, codec=codec, crf=crf,
                                 warn=lambda line: tqdm.write(f"warning: {source}: {line}", file=sys.stderr),
                                 suffix=target.suffix, rotation=_rotation(source))
            items = read_items(container, source, set(writer.copied), skip_unreadable, stats)
            bar = tqdm(total=_expected_frames(container, src), unit="frame", desc=source.name,
                       disable=not progress, leave=False)
            stamps = _Timestamps(src)
            # closed on the way out, so an error here stops the pipeline's threads at once
            # (not when its traceback is freed)
            upscaled = contextlib.closing(upscale_items(model, items, width, device=device, batch=batch,
                                                        **options))
            try:
                with upscaled as stream:
                    for item in stream:
                        if item.frame is None:
                            writer.copy(item.meta)
                            continue
                        writer.write(item.frame, *stamps(item.meta))
                        bar.update()
                writer.close()
            except BaseException:
                writer.abort()
                raise
            finally:
                bar.close()
    return size, len(writer.copied)


def _rotation(source: Path) -> int:
    """The display rotation FFmpeg gives the first frame (from the container or the stream);
    0 when that frame does not decode, which the reader then reports."""
    av = import_av()
    with open_video(source) as container:
        try:
            for frame in container.decode(video=0):
                return round(frame.rotation or 0)
        except av.FFmpegError:
            pass
    return 0


def _expected_frames(container, src) -> int | None:
    """For the progress bar's time left: the count the container declares, else an estimate."""
    if src.frames:
        return src.frames
    rate = src.average_rate or src.guessed_rate
    if src.duration and src.time_base and rate:
        return round(src.duration * src.time_base * rate)
    if container.duration and rate:  # in microseconds
        return round(Fraction(container.duration, 1_000_000) * rate)
    return None


class _Timestamps:
    """Each frame's own timestamp; one the container left out (some AVI files) follows the
    previous by one frame at the stream's rate."""

    def __init__(self, src):
        self.time_base = src.time_base or Fraction(1, 90000)
        rate = src.average_rate or src.guessed_rate or Fraction(25)
        self.step = max(1, round(1 / (rate * self.time_base)))
        self.last: int | None = None

    def __call__(self, stamp: Stamp) -> tuple[int, Fraction]:
        if stamp.pts is not None and stamp.time_base is not None:
            self.last = round(stamp.pts * stamp.time_base / self.time_base)
        else:
            self.last = 0 if self.last is None else self.last + self.step
        return self.last, self.time_base
