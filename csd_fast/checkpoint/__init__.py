"""Checkpoints: the project's own .safetensors format, and the EDSR layouts users already have."""
from .io import FORMAT_TAG, FORMAT_VERSION, load_checkpoint, read_metadata, save_checkpoint
from .layouts import LAYOUTS, convert_state_dict, detect_layout

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "LAYOUTS",
    "convert_state_dict",
    "detect_layout",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
