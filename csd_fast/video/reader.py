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
    skipped: int = 0  # packets that did not decode, or a read error or cut that ended the file
    last: float | None = None  # the last frame's time, seconds


def read_items(container, path: Path, copied: set[int], skip_unreadable: bool,
               stats: ReadStats) -> Iterator[Item]:
    """Item(RGB frame, Stamp) for each frame of the first video stream; Item(None, packet)
    for each packet of the streams whose index is in `copied`. A packet that does not
    decode raises UnreadableVideo, or is counted in stats.skipped and passed over; a file
    that cannot be read further (cut short, damaged) raises, or ends the stream there.

    A stream whose frames end well before the duration its container declares was cut
    short (damage FFmpeg does not always report): that raises, or counts as one skipped.
    (Its declared frame count is no test: an MP4 trimmed in an editor keeps samples outside
    its edit list, which FFmpeg rightly does not return.)"""
    av = import_av()
    video = container.streams.video[0]
    video.thread_type = "AUTO"  # FFmpeg's own decoding threads
    wanted = [video, *(s for s in container.streams if s.index in copied)]
    packets = container.demux(wanted)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as err:
            if not skip_unreadable:
                raise UnreadableVideo(f"{path}: reading stopped after {stats.frames} frames "
                                      f"({err.strerror or err})") from err
            stats.skipped += 1
            return
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
            stats.last = frame.time if frame.time is not None else stats.last
            yield Item(frame.to_ndarray(format="rgb24"), Stamp(frame.pts, frame.time_base))
    shortfall = _missing_seconds(video, stats.last)
    if shortfall is not None:
        if not skip_unreadable:
            raise UnreadableVideo(f"{path}: the video ends {shortfall:.2f} s before the duration its "
                                  f"container declares (cut short?)")
        stats.skipped += 1


def _missing_seconds(video, last: float | None) -> float | None:
    """How long before its declared end the stream's last frame came, when that is more than
    3 frames and 5% of the duration; None otherwise or when nothing is declared."""
    if not video.duration or not video.time_base or last is None:
        return None
    start = float((video.start_time or 0) * video.time_base)
    duration = float(video.duration * video.time_base)
    rate = video.average_rate or video.guessed_rate
    frame = 1 / float(rate) if rate else 0.1
    missing = start + duration - (last + frame)
    return missing if missing > max(3 * frame, 0.05 * duration) else None
