"""Video in, video out: `upscale_video` for files, `upscale_frames` for any stream of RGB
frames (what a service calls), both a pipeline in which decoding, the network and encoding
overlap. Needs PyAV (the `video` extra) for files; upscale_frames does not."""
from ._av import UnreadableVideo
from .convert import VideoSummary, upscale_video
from .pipeline import upscale_frames
from .probe import VIDEO_SUFFIXES, check_video, is_video, video_output_name

__all__ = ["UnreadableVideo", "VIDEO_SUFFIXES", "VideoSummary", "check_video", "is_video",
           "upscale_frames", "upscale_video", "video_output_name"]
