"""Encoding upscaled frames into a new container, with the source's timestamps, and copying
the source's audio and subtitle packets into it unchanged."""
from __future__ import annotations

import io
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from ._av import import_av

DEFAULT_CODEC = "libx264"
# lossless codecs get an RGB format, so frames come back bit for bit
_RGB_FORMATS = ("bgr0", "gbrp", "rgb24", "bgra")
# formats whose chroma planes are subsampled: frame sides must be even
_SUBSAMPLED = ("420", "422", "411", "410", "nv12", "nv16", "nv21", "nv20")
_BT709, _MPEG_RANGE = 1, 1  # FFmpeg's AVCOL_SPC_BT709 (also _PRI_, _TRC_), AVCOL_RANGE_MPEG
_QUALITY = {"libx264": "crf", "libx265": "crf", "libvpx-vp9": "crf", "libaom-av1": "crf",
            "libsvtav1": "crf"}
_CRF_MAX = {"libx264": 51, "libx265": 51}  # the others' scales end at 63


def pick_format(codec) -> str:
    """ffv1 (and other codecs taking RGB): an RGB format, lossless; else yuv420p when the
    codec takes it (what players expect), else the codec's first format."""
    names = [f.name for f in codec.video_formats or ()]
    if codec.name == "ffv1" or "yuv420p" not in names:
        for name in _RGB_FORMATS:
            if name in names:
                return name
    return "yuv420p" if "yuv420p" in names else names[0]


def needs_even(pix_fmt: str) -> bool:
    return any(tag in pix_fmt for tag in _SUBSAMPLED)


class VideoWriter:
    """A video stream (codec, crf) of frames width x height (padded to even sides by
    repeating the last column/row when the pixel format subsamples chroma) and copies of
    the source's audio and subtitle streams the container takes (others are dropped, with
    a warning). Every check (codec, container, streams) happens in __init__, before the
    first frame."""

    def __init__(self, path: Path, source, width: int, height: int, codec: str = DEFAULT_CODEC,
                 crf: int | None = None, warn=lambda line: print(line, file=sys.stderr),
                 suffix: str | None = None, rotation: int = 0):
        """suffix: the one that picks the container format (default: path's), for writing
        under a temporary name. rotation: the source's display rotation, in degrees (a
        phone's portrait video is stored sideways and turned by its player)."""
        self.rotation = rotation
        av = import_av()
        self._av = av
        src = source.streams.video[0]
        self.codec = _encoder(codec)
        self.pix_fmt = pick_format(self.codec)
        self.yuv = self.pix_fmt.startswith(("yuv", "nv"))
        self.pad = (width % 2, height % 2) if needs_even(self.pix_fmt) else (0, 0)
        self.rate = src.average_rate or src.guessed_rate or Fraction(25)
        self.copied = {}
        suffix = suffix or path.suffix
        self.out = _open_output(path, suffix)
        try:
            fmt = self.out.format.name
            _check_holds(self.out, self.codec, suffix)
            self.stream = self._add_video(self.out, width, height, crf, src)
            for s in source.streams:
                if s.type not in ("audio", "subtitle"):
                    continue
                if self._fits(fmt, width, height, crf, src, s):
                    self.copied[s.index] = self.out.add_stream_from_template(s)
                else:
                    warn(f"dropped {s.type} stream #{s.index} ({s.codec_context.name}): "
                         f"a {suffix} file cannot hold it")
        except BaseException:
            self.out.close()
            raise

    def _add_video(self, container, width: int, height: int, crf: int | None, src):
        stream = container.add_stream(self.codec.name, rate=self.rate)
        stream.width, stream.height = width + self.pad[0], height + self.pad[1]
        stream.pix_fmt = self.pix_fmt
        # the source's time base, so every frame keeps its exact timestamp (variable rate too)
        stream.time_base = stream.codec_context.time_base = src.time_base
        if src.codec_context.sample_aspect_ratio:  # anamorphic pixels stay so
            stream.codec_context.sample_aspect_ratio = src.codec_context.sample_aspect_ratio
        if self.rotation:
            stream.set_display_rotation(self.rotation)
        if self.yuv:
            # tagged, so no player guesses (BT.601 for small frames, BT.709 for HD); primaries
            # and transfer are the source's, which the RGB values still carry
            context, source = stream.codec_context, src.codec_context
            context.colorspace, context.color_range = _BT709, _MPEG_RANGE
            context.color_primaries = source.color_primaries if source.color_primaries != 2 else _BT709
            context.color_trc = source.color_trc if source.color_trc != 2 else _BT709
        stream.options = _quality(self.codec, crf)
        return stream

    def _fits(self, fmt: str, width: int, height: int, crf: int | None, src, stream) -> bool:
        """Whether a header with this stream copied is accepted, tried in memory first (the
        muxers' own checks, e.g. codec tags, run only when a header is written)."""
        trial = self._av.open(io.BytesIO(), "w", format=fmt)
        try:
            self._add_video(trial, width, height, crf, src)
            trial.add_stream_from_template(stream)
            trial.start_encoding()
            return True
        except (ValueError, self._av.FFmpegError):
            return False
        finally:
            try:
                trial.close()
            except self._av.FFmpegError:
                pass

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction | None) -> None:
        if any(self.pad):
            rgb = np.pad(rgb, ((0, self.pad[1]), (0, self.pad[0]), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if self.yuv:  # by the matrix the stream is tagged with, not swscale's default (BT.601)
            frame = frame.reformat(format=self.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.pts, frame.time_base = pts, time_base
        self.out.mux(self.stream.encode(frame))

    def copy(self, packet) -> None:
        packet.stream = self.copied[packet.stream.index]
        self.out.mux(packet)

    def close(self) -> None:
        """Flush the encoder and write the trailer."""
        self.out.mux(self.stream.encode(None))
        self.out.close()

    def abort(self) -> None:
        try:
            self.out.close()
        except self._av.FFmpegError:
            pass


def check_encoder(suffix: str, codec: str, crf: int | None) -> None:
    """Raise ValueError unless `codec` exists, takes `crf`, and a `suffix` file can hold it:
    the checks VideoWriter makes, for the command line to make before any work."""
    encoder = _encoder(codec)
    _quality(encoder, crf)
    out = _open_output(None, suffix)
    try:
        _check_holds(out, encoder, suffix)
    finally:
        out.close()


def _encoder(name: str):
    av = import_av()
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as err:  # PyAV raises UnknownCodecError or ValueError by version
        raise ValueError(f"--codec {name}: no such encoder in this FFmpeg ({err})") from None
    if codec.type != "video":
        raise ValueError(f"--codec {name} is a {codec.type} encoder, not a video one")
    return codec


def _quality(codec, crf: int | None) -> dict[str, str]:
    """The encoder options that set --crf."""
    if crf is None:
        return {}
    if codec.name not in _QUALITY:
        raise ValueError(f"--crf applies to {', '.join(_QUALITY)}, not {codec.name}")
    top = _CRF_MAX.get(codec.name, 63)
    if not 0 <= crf <= top:
        raise ValueError(f"--crf {crf}: {codec.name} takes 0 (best) to {top}")
    options = {_QUALITY[codec.name]: str(crf)}
    if codec.name == "libvpx-vp9":
        options["b"] = "0"  # constant quality, no bitrate target
    return options


def _open_output(path: Path | None, suffix: str):
    """An output container at path (None: in memory) in the format FFmpeg picks for suffix."""
    av = import_av()
    try:
        with tempfile.TemporaryDirectory() as folder:  # FFmpeg guesses formats from file names
            with av.open(str(Path(folder) / f"probe{suffix}"), "w") as probe:
                fmt = probe.format.name
        return av.open(str(path) if path else io.BytesIO(), "w", format=fmt)
    except (ValueError, av.FFmpegError) as err:
        raise ValueError(f"FFmpeg has no container for the suffix {suffix!r} "
                         f"(try --container mkv)") from err


def _check_holds(out, codec, suffix: str) -> None:
    if codec.name not in out.supported_codecs:
        raise ValueError(f"a {suffix} file ({out.format.name}) cannot hold {codec.name} video: "
                         f"pass --container mkv, or another --codec")
