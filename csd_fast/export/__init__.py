"""Shipping the student: the width-r network as a file of its own (docs/export.md).

export_student cuts an ordinary EDSR of int(n_feats * r) features out of a CSD network;
write_student stores it as a csd_fast .safetensors, an EDSR-PyTorch or BasicSR state
dict, or ONNX; export_checkpoint does both from a checkpoint file (`csd-fast export`).
"""
from .files import FORMATS, export_checkpoint, write_student
from .layouts import constructor_args, layout_state_dict
from .onnx_file import export_onnx
from .student import FixedWidth, export_student

__all__ = [
    "FORMATS",
    "FixedWidth",
    "constructor_args",
    "export_checkpoint",
    "export_onnx",
    "export_student",
    "layout_state_dict",
    "write_student",
]
