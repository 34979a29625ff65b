"""Is a file a video? Decided by its bytes, not its name: known image signatures stay
images (FFmpeg would open a PNG as a one-frame "video"), anything else FFmpeg opens with
a video stream is a video."""
from __future__ import annotations

from pathlib import Path

from ._av import UnreadableVideo, import_av

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")  # looked for in folders
_MORE_CONTAINERS = (".ts", ".m2ts", ".mts", ".flv", ".ogv", ".mpg", ".mpeg", ".3gp", ".nut")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF8", b"II*\x00", b"MM\x00*")
# formats FFmpeg opens with a "video" stream that are not videos: image sequences, text
_NOT_VIDEO = ("image2", "tty", "gif", "apng")
# container signatures, to say "install PyAV" rather than "not an image" when it is missing
_VIDEO_MAGIC = (b"\x1a\x45\xdf\xa3", b"OggS")  # Matroska/WebM, Ogg; ISO BMFF and AVI below


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _looks_like_video(head: bytes) -> bool:
    return (head.startswith(_VIDEO_MAGIC) or head[4:8] == b"ftyp"
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI "))


def is_video(path: str | Path) -> bool:
    """True for a file FFmpeg opens with a video stream that is not a still image. Without
    PyAV, a file that looks like a video (by its signature or suffix) raises ImportError."""
    path = Path(path)
    head = _head(path)
    if _looks_like_image(head):
        return False
    try:
        av = import_av()
    except ImportError:
        if _looks_like_video(head) or path.suffix.lower() in VIDEO_SUFFIXES:
            raise
        return False
    try:
        with av.open(str(path)) as container:
            name = container.format.name
            still = name in _NOT_VIDEO or name.endswith("_pipe")  # FFmpeg's single-image readers
            return bool(container.streams.video) and not still
    except av.FFmpegError:
        if path.suffix.lower() in VIDEO_SUFFIXES:  # named a video: say it is broken, not "not an image"
            return True
        return False


def open_video(path: str | Path):
    """The input container, or UnreadableVideo naming the file and FFmpeg's reason."""
    av = import_av()
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise UnreadableVideo(f"{path}: not a readable video ({err.strerror or err})") from err
    if not container.streams.video:
        container.close()
        raise UnreadableVideo(f"{path}: has no video stream")
    return container


def check_video(path: str | Path) -> None:
    """Raise UnreadableVideo unless the container opens and its first frame decodes, before
    any work starts (damage further in is found while upscaling)."""
    av = import_av()
    with open_video(path) as container:
        try:
            next(container.decode(video=0))
        except StopIteration:
            raise UnreadableVideo(f"{path}: its video stream has no frames") from None
        except av.FFmpegError as err:
            raise UnreadableVideo(f"{path}: not a readable video ({err.strerror or err})") from err


def video_output_name(path: Path, container: str | None = None) -> str:
    """clip.mp4 -> clip.mp4; with --container mkv -> clip.mkv. A suffix that is not a common
    video container's (clip.dat, or none) -> .mkv: Matroska takes every codec and stream kind
    this package copies."""
    suffix = path.suffix.lower()
    if container:
        suffix = f".{container.lstrip('.')}"
    elif suffix not in VIDEO_SUFFIXES + _MORE_CONTAINERS:
        suffix = ".mkv"
    return f"{path.stem}{suffix}"
