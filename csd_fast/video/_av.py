"""PyAV, the optional `video` extra: imported on first use, with one line saying how to get it."""
from __future__ import annotations

INSTALL = "pip install 'csd_fast[video]' (or: pip install av)"


def import_av():
    try:
        import av
    except ImportError as err:
        raise ImportError(f"video needs PyAV, which is not installed: {INSTALL}") from err
    return av


class UnreadableVideo(ValueError):
    """A video FFmpeg cannot open, or a packet or frame it cannot decode."""
