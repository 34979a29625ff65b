"""Demuxing a video: its frames decoded to 8-bit RGB with their timestamps, and the packets
of the streams to copy, in the container's order."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ._av import UnreadableVideo, import_av
from .pipeline import Item


@dataclass
class Stamp:
    pts: int | None
    time_base: Fraction | None


@dataclass
class ReadStats:
    frames: int = 0
    skipped: int = 0  # packets that did not decode (--skip-unreadable)


def read_items(container, path: Path, copied: set[int], skip_unreadable: bool,
               stats: ReadStats) -> Iterator[Item]:
    """Item(RGB frame, Stamp) for each frame of the first video stream; Item(None, packet)
    for each packet of the streams whose index is in `copied`. A packet that does not
    decode raises UnreadableVideo, or is counted in stats.skipped and passed over."""
    av = import_av()
    video = container.streams.video[0]
    video.thread_type = "AUTO"  # FFmpeg's own decoding threads
    wanted = [video, *(s for s in container.streams if s.index in copied)]
    for packet in container.demux(wanted):
        if packet.stream.index != video.index:
            if packet.dts is not None:  # not the demuxer's end-of-stream marker
                yield Item(None, packet)
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError as err:
            if not skip_unreadable:
                where = "" if packet.pts is None else f" at {float(packet.pts * packet.time_base):.3f} s"
                raise UnreadableVideo(f"{path}: a video packet{where} does not decode "
                                      f"({err.strerror or err})") from err
            stats.skipped += 1
            continue
        for frame in frames:
            stats.frames += 1
            yield Item(frame.to_ndarray(format="rgb24"), Stamp(frame.pts, frame.time_base))
    declared = video.frames
    missing = declared - stats.frames - stats.skipped if declared else 0
    if missing > 0:
        if not skip_unreadable:
            raise UnreadableVideo(f"{path}: the video stream ends after {stats.frames} of the "
                                  f"{declared} frames its container declares (truncated?)")
        stats.skipped += missing
