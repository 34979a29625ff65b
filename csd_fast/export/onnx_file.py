"""ONNX export of an EDSRCSD at one width, with dynamic batch, height and width.

The graph is traced from backend="reference" (plain PyTorch convolutions and pixel
shuffles, which every ONNX runtime has), in float32, through torch's torch.export-based
exporter (torch.onnx.export(dynamo=True), which needs onnxscript): the TorchScript-based
one it replaces is deprecated and slated for removal.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .._atomic import atomic_write_bytes
from ..archs.edsr_csd import EDSRCSD
from .student import FixedWidth, _unwrap

__all__ = ["INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "export_onnx", "onnx_bytes", "require_onnx"]

ONNX_OPSET = 18  # the exporter's own opset: no version conversion pass
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
INSTALL_HINT = "pip install csd_fast[export]"


def require_onnx() -> None:
    """Raise ImportError, naming the extra that installs them, where onnx or onnxscript is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({err}); "
                          f"install them with `{INSTALL_HINT}`") from None


def _reference_copy(model: EDSRCSD) -> EDSRCSD:
    """A float32 CPU copy on backend="reference", so the caller's model is left as it is."""
    copy = EDSRCSD(**model.config(), backend="reference")
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    return copy.eval()


def onnx_bytes(model: EDSRCSD, width: float = 1.0, *, opset: int = ONNX_OPSET,
               metadata: dict[str, str] | None = None) -> bytes:
    """The serialized ONNX model of model(x, width): input "lr" (N, 3, H, W) float32 in
    [0, rgb_range], output "sr" (N, 3, scale*H, scale*W); N, H and W are dynamic."""
    require_onnx()
    import onnx

    model = _reference_copy(_unwrap(model))
    wrapped = FixedWidth(model, width).eval()
    # 2 x 17 x 19: no dimension of size 0 or 1, none equal, so none gets specialised
    sample = torch.rand(2, 3, 17, 19) * model.rgb_range
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.onnx.export(
        wrapped, (sample,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes={"x": dims}, verbose=False,
    )
    proto = program.model_proto
    props = {"producer": "csd_fast", "scale": str(model.scale), "width": repr(float(width)),
             "n_feats": str(model.channels(width)), "input_range": repr(model.rgb_range)}
    onnx.helper.set_model_props(proto, {**props, **(metadata or {})})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: EDSRCSD, path: str | os.PathLike, width: float = 1.0, *,
                opset: int = ONNX_OPSET, metadata: dict[str, str] | None = None) -> Path:
    """Write onnx_bytes(model, width) to path, atomically."""
    return atomic_write_bytes(Path(path), onnx_bytes(model, width, opset=opset, metadata=metadata))
