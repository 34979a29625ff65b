"""Writing a slim student to a file in each export format, and the checkpoint-to-file
conversion behind `csd-fast export`."""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from .._atomic import atomic_write_bytes
from .._outputs import check_outputs
from ..archs.edsr_csd import EDSRCSD
from ..checkpoint import load_checkpoint, save_checkpoint
from ..checkpoint.io import untrained_width
from ..checkpoint.layouts import convert_state_dict
from .layouts import constructor_args, layout_state_dict, torch_file_bytes
from .onnx_file import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, onnx_bytes, require_onnx
from .student import export_student, slim_metadata

__all__ = ["FORMATS", "export_checkpoint", "write_student"]

# format -> the file name ending it is conventionally given
FORMATS = {"csd_fast": ".safetensors", "edsr_pytorch": ".pt", "basicsr": ".pth", "onnx": ".onnx"}
OVERRIDABLE = ("res_scale", "rgb_range", "img_range", "rgb_mean")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _load_overrides(slim: EDSRCSD, layout: str) -> dict:
    """What load_checkpoint must be told about a file in `layout` to rebuild `slim`
    exactly: the hyper-parameters its inference from the tensors gets otherwise."""
    _, inferred = convert_state_dict(layout_state_dict(slim, layout), layout)
    wanted = slim.config()
    return {k: wanted[k] for k in OVERRIDABLE if inferred[k] != wanted[k]}


def write_student(slim: EDSRCSD, fmt: str, path: str | os.PathLike, *,
                  source: str | None = None) -> dict:
    """Write a slim student (export_student's result) to path in format fmt, atomically.

    Returns what the file holds: path, format, width (the source width it was cut at),
    n_feats, parameters, the hyper-parameters, `load_with` (what the target project's
    EDSR or runtime needs: constructor arguments, or ONNX input/output names) and
    `load_overrides` (keyword arguments load_checkpoint needs for the file to give
    exactly this network; empty where the file says everything).
    """
    _check_format(fmt)
    path = Path(os.fspath(path))
    overrides: dict = {}
    if fmt == "csd_fast":
        save_checkpoint(slim, path, metadata=slim_metadata(slim, source), default_width=1.0)
        load_with = slim.config()
    elif fmt == "onnx":
        # the config (depth above all) lets `csd-fast eval` tile the file exactly
        metadata = {**slim_metadata(slim, source), "config": json.dumps(slim.config())}
        atomic_write_bytes(path, onnx_bytes(slim, 1.0, metadata=metadata))
        load_with = dict(input=INPUT_NAME, output=OUTPUT_NAME, opset=ONNX_OPSET, dtype="float32",
                         input_range=slim.rgb_range)
    else:
        atomic_write_bytes(path, torch_file_bytes(slim, fmt))
        load_with = constructor_args(slim, fmt)
        overrides = _load_overrides(slim, fmt)
    width, source_n_feats = getattr(slim, "slim_of", (1.0, slim.n_feats))
    return dict(path=str(path), format=fmt, width=width, **slim.config(),
                parameters=slim.num_parameters(), source=source, source_n_feats=source_n_feats,
                load_with=load_with, load_overrides=overrides)


def export_checkpoint(checkpoint: str | os.PathLike, width: float | None, fmt: str,
                      output: str | os.PathLike, overwrite: bool = False) -> dict:
    """Load a checkpoint (any layout load_checkpoint reads), cut its student at `width`
    and write it to `output` in format fmt: "csd_fast" (.safetensors), "edsr_pytorch"
    (.pt), "basicsr" (.pth) or "onnx" (.onnx). Returns write_student's description.

    width: None takes the checkpoint's default_width, or 1 where it records none. The
    description returned has one more entry, "warnings": a line saying that the width was
    never trained, where the checkpoint records the widths that were.
    Refuses to replace an existing output unless overwrite, and never writes over the
    checkpoint itself. Errors (one line, naming the problem): ValueError for an unknown
    format, a width outside (0, 1] or of fewer than 1 channel, output == checkpoint, an
    unreadable checkpoint; FileExistsError; IsADirectoryError for an output that is a folder;
    FileNotFoundError for a missing checkpoint;
    ImportError (naming `pip install csd_fast[export]`) for onnx without its packages.
    """
    _check_format(fmt)
    if fmt == "onnx":
        require_onnx()
    checkpoint, output = Path(os.fspath(checkpoint)), Path(os.fspath(output))
    check_outputs([("output", output)], [("the input checkpoint", checkpoint)], overwrite=overwrite,
                  overwrite_flag="overwrite=True (--overwrite)")
    if width is not None and (isinstance(width, bool) or not isinstance(width, numbers.Real)
                              or not 0.0 < width <= 1.0):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
    try:
        model = load_checkpoint(checkpoint, backend="reference")
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot export {checkpoint}: {err}") from None
    if width is None:
        width = model.default_width or 1.0
    try:
        slim = export_student(model, width, backend="reference")
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot export {checkpoint} at width {width}: {err}") from None
    untrained = untrained_width(model, width)
    if model.trained_widths is not None and untrained is None:
        slim.trained_widths = (1.0,)  # the slim network is the trained width, run whole
    written = write_student(slim, fmt, output, source=str(checkpoint))
    return {**written, "warnings": [untrained] if untrained else []}
