"""An exported ONNX file run through ONNX Runtime, with the parts of the EDSRCSD interface
that evaluation and tiled / self-ensemble inference use, so that `csd-fast eval` scores the
very file a deployer ships.

The file is the one `csd-fast export --format onnx` writes (csd_fast/export/onnx_file.py):
input "lr" (N, 3, H, W) float32 in [0, input_range], output "sr" (N, 3, scale*H, scale*W),
N, H and W dynamic, and metadata giving scale, input_range and, since the export records it,
the network's config. It holds one width: the one it was exported at, which it runs whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..archs.edsr_csd import EDSRCSD, upsample_factors
from .onnx_file import INPUT_NAME, OUTPUT_NAME

__all__ = ["OnnxModel"]


class OnnxModel:
    """model(x, width=1.0) for x float32 (N, 3, h, w) in [0, rgb_range], on the CPU."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(f"{path} is an ONNX file: install onnxruntime to evaluate it "
                              "(`pip install onnxruntime`, or `pip install csd_fast[export]`)") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types are not importable stably
            raise ValueError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from None
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]) or "scale" not in meta or "input_range" not in meta:
            raise ValueError(f"{path}: an ONNX model, but not one `csd-fast export` wrote (it needs input "
                             f"{INPUT_NAME!r}, output {OUTPUT_NAME!r} and scale/input_range metadata)")
        self.scale = int(meta["scale"])
        self.rgb_range = float(meta["input_range"])
        self.factors = upsample_factors(self.scale)
        config = json.loads(meta.get("config", "{}"))
        self.n_resblocks = config.get("n_resblocks")  # None: files exported before it was recorded
        self.exported_width = float(meta.get("export_width", meta.get("width", 1.0)))
        self.default_width = self.trained_widths = None

    def __call__(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        self.channels(width)
        (sr,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x.float().cpu().numpy())})
        return torch.from_numpy(sr)

    def channels(self, width: float) -> None:
        if width != 1.0:
            raise ValueError(f"width {width:g}: {self.path} is an ONNX file of one width (exported at "
                             f"{self.exported_width:g}); it runs only whole, at width 1")

    # the exported network takes and gives pixels in the source model's range, as that model does
    to_model_range = EDSRCSD.to_model_range
    from_model_range = EDSRCSD.from_model_range

    def to(self, device: torch.device) -> OnnxModel:
        if torch.device(device).type != "cpu":
            raise ValueError(f"--device {device}: ONNX files are evaluated on the CPU through onnxruntime")
        return self

    def eval(self) -> OnnxModel:
        return self
