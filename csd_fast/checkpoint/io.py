"""Reading and writing checkpoint files.

The project's own format is one .safetensors file: the EDSRCSD weights, and in the
header metadata the hyper-parameters that rebuild the model and, optionally, the width
the weights are meant to run at (a CSD student's). Other files go through
torch.load(weights_only=True) only, so loading never runs code from the file.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from .._atomic import atomic_write_bytes
from ..archs.edsr_csd import EDSRCSD
from .layouts import convert_state_dict

FORMAT_TAG = "csd_fast.edsr_csd"
FORMAT_VERSION = 1
DEFAULT_WIDTH_KEY = "default_width"
TRAINED_WIDTHS_KEY = "trained_widths"
RESERVED_METADATA = ("format", "format_version", "config", DEFAULT_WIDTH_KEY, TRAINED_WIDTHS_KEY)

PathLike = str | os.PathLike
REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)|reduce for unrecognized function|Unsupported class")


def save_checkpoint(model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None,
                    *, default_width: float | None = None,
                    trained_widths: tuple[float, ...] | None = None) -> Path:
    """Write model's weights and config to one .safetensors file, atomically.

    metadata: extra str -> str entries stored in the header (read them with read_metadata).
    default_width: the width the weights are meant to run at (a CSD student's width), read
    back as load_checkpoint(...).default_width and used by `csd-fast eval/upscale` when no
    --width is given. Default: the model's own default_width, so a model loaded from such a
    checkpoint and saved again keeps it.
    trained_widths: the widths training optimised (see trained_widths()); eval and upscale
    warn when run at another. Default: what a metadata "stage" entry implies (the trainer
    writes one), else the model's own trained_widths; none is recorded when neither says.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, EDSRCSD):
        raise TypeError(f"save_checkpoint expects an EDSRCSD model, got {type(model).__name__}")
    header = {
        "format": FORMAT_TAG,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config()),
    }
    if default_width is None:
        default_width = getattr(model, "default_width", None)
    if default_width is not None:
        header[DEFAULT_WIDTH_KEY] = repr(_checked_width(model, default_width))
    if trained_widths is None:
        trained_widths = (trained_widths_of((metadata or {}).get("stage"), default_width)
                          or getattr(model, "trained_widths", None))
    if trained_widths is not None:
        header[TRAINED_WIDTHS_KEY] = ",".join(repr(_checked_width(model, w)) for w in trained_widths)
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA:
            raise ValueError(f"metadata key {key!r} is reserved; reserved keys: {list(RESERVED_METADATA)}")
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
        header[key] = value
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(os.fspath(path))
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=header))
    return path


def _checked_width(model: EDSRCSD, width: object) -> float:
    try:
        model.channels(width)  # the model's own rule: a number in (0, 1] giving >= 1 channel
    except (TypeError, ValueError) as err:
        raise type(err)(f"default_width: {err}") from None
    return float(width)


def trained_widths_of(stage: object, width: object) -> tuple[float, ...] | None:
    """The widths a `csd-fast train` stage optimises: a teacher run width 1; a csd run its
    student's width and, through the teacher term of the joint loss, 1; a student run its
    width alone. None for anything else (not a trainer's file)."""
    if stage == "teacher":
        return (1.0,)
    if stage not in ("csd", "student") or not isinstance(width, (int, float)) or not 0 < width <= 1:
        return None
    return (float(width), 1.0) if stage == "csd" and width != 1 else (float(width),)


def untrained_width(model: nn.Module, width: float) -> str | None:
    """A one-line warning when the checkpoint says which widths were trained and `width` gives a
    channel count none of them does (such a width scores far below the trained ones); else None."""
    trained = getattr(model, "trained_widths", None)
    if not trained or model.channels(width) in {model.channels(w) for w in trained}:
        return None
    listed = " and ".join(f"{w:g}" for w in trained)
    return (f"width {width:g} was never trained: this checkpoint was trained at width"
            f"{'s' if len(trained) > 1 else ''} {listed}, and scores far lower at any other")


# The first bytes of what torch.save writes: a zip archive (since torch 1.6), a pickle of
# protocol 2+ (the legacy format) or, from the oldest versions, a tar archive.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
TAR_MAGIC_AT_257 = b"ustar"
# ONNX files are protobuf ModelProtos, which begin with field 1 (ir_version, a small varint),
# then another ModelProto field: producer name/version, domain, model version, doc, graph, opsets
ONNX_IR_TAG = 0x08
ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}


def _format(path: Path) -> str | None:
    """"safetensors", "torch", "onnx" or None (none of them), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    # safetensors: an 8-byte little-endian header length, then the JSON header itself.
    if len(head) >= 9 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        # a .safetensors name with a header cut short is a truncated file: its reader says so
        if 0 < size <= path.stat().st_size - 8 or path.suffix == ".safetensors":
            return "safetensors"
    if head.startswith((ZIP_MAGIC, PICKLE_PROTO)) or head[257:262] == TAR_MAGIC_AT_257:
        return "torch"
    if len(head) >= 3 and head[0] == ONNX_IR_TAG and head[1] < 0x80 and head[2] in ONNX_NEXT_TAGS:
        return "onnx"
    return None


# what a file given as a checkpoint turns out to be, by its first bytes
OTHER_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
               (b"version https://git-lfs", "a Git LFS pointer, not the file itself; fetch it with "
                                            "`git lfs pull`"))


def is_onnx_file(path: PathLike) -> bool:
    """Whether path holds an ONNX model (by its first bytes; a .onnx name is not required)."""
    path = Path(os.fspath(path))
    return path.is_file() and _format(path) == "onnx"


def _not_a_checkpoint(path: Path) -> ValueError:
    """What the file is instead, in words: never its raw bytes, which mean nothing to a reader."""
    with open(path, "rb") as f:
        head = f.read(512)
    kind = next((what for magic, what in OTHER_KINDS if head.startswith(magic)), None)
    if not head:
        why = "the file is empty"
    elif kind is not None:
        why = f"it is {kind}"
    elif head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        why = "it is an HTML page, perhaps what a failed download saved"
    elif _looks_like_text(head):
        why = "it is a text file"
    else:
        why = "its first bytes match neither format"
    return ValueError(f"not a checkpoint: {path} is neither a .safetensors file nor a PyTorch "
                      f"checkpoint written by torch.save ({why})")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[:err.start].decode("utf-8")  # a character cut by the end of the read
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _unreadable(path: Path, kind: str, err: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable {kind} (corrupt or truncated?): {type(err).__name__}: {err}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # SafetensorError is not importable under a stable name
        raise _unreadable(path, ".safetensors file", err) from err
    return tensors, metadata


def _torch_load(path: Path, map_location) -> object:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # A garbage file fails the same way ("Unsupported operand"); only globals mean code.
        found = REFUSED.search(str(err))
        if not found:
            raise _unreadable(path, "PyTorch checkpoint", err) from err
        what = f" (it references {found.group(1)})" if found.group(1) else ""
        raise ValueError(
            f"{path}: refused to load: the file pickles Python objects{what}, and unpickling them would "
            "execute code. Only tensors and plain containers are read (torch.load weights_only=True); "
            "re-save just the state dict from a trusted environment."
        ) from None
    except Exception as err:
        raise _unreadable(path, "PyTorch checkpoint", err) from err


def read_file(path: PathLike, map_location="cpu") -> tuple[object, dict[str, str] | None]:
    """(contents, safetensors header metadata or None for torch.load files)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint path is not a file: {path}")
    kind = _format(path)
    if kind == "onnx":
        raise ValueError(f"{path} is an ONNX file: it runs in ONNX Runtime, not as PyTorch weights; "
                         "`csd-fast eval --checkpoint` scores it (with onnxruntime installed)")
    if kind is None:
        raise _not_a_checkpoint(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return _torch_load(path, map_location), None


def read_metadata(path: PathLike) -> dict[str, str]:
    """The header metadata of a .safetensors checkpoint (config JSON, format tag, user entries)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as err:
        raise _unreadable(path, ".safetensors file", err) from err


def _stored_config(path: PathLike, metadata: dict[str, str]) -> dict:
    if metadata.get("format") != FORMAT_TAG:
        return {}
    try:
        version = int(metadata.get("format_version", ""))
        config = json.loads(metadata["config"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: csd_fast checkpoint with a damaged header: {err!r}") from err
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in csd_fast checkpoint format {version}; "
            f"this version reads up to {FORMAT_VERSION}"
        )
    if not isinstance(config, dict):
        raise ValueError(f"{path}: csd_fast checkpoint config is not a JSON object")
    return config


def _stored_width(path: PathLike, metadata: dict[str, str]) -> float | None:
    """The default_width a csd_fast checkpoint records, or None (older files, other formats)."""
    text = metadata.get(DEFAULT_WIDTH_KEY) if metadata.get("format") == FORMAT_TAG else None
    if text is None:
        return None
    try:
        width = float(text)
    except ValueError:
        width = math.nan
    if not 0.0 < width <= 1.0:  # also False for NaN
        raise ValueError(f"{path}: csd_fast checkpoint with a damaged header: "
                         f"{DEFAULT_WIDTH_KEY}={text!r} is not a width in (0, 1]")
    return width


def _stored_trained_widths(path: PathLike, metadata: dict[str, str],
                           default_width: float | None) -> tuple[float, ...] | None:
    """The widths a csd_fast checkpoint records as trained; for files written before that was
    recorded, what the trainer's "stage" entry implies; None when the file does not say."""
    if metadata.get("format") != FORMAT_TAG:
        return None
    text = metadata.get(TRAINED_WIDTHS_KEY)
    if text is None:
        return trained_widths_of(metadata.get("stage"), default_width)
    try:
        widths = tuple(float(w) for w in text.split(","))
    except ValueError:
        widths = (math.nan,)
    if not all(0.0 < w <= 1.0 for w in widths):
        raise ValueError(f"{path}: csd_fast checkpoint with a damaged header: "
                         f"{TRAINED_WIDTHS_KEY}={text!r} is not a list of widths in (0, 1]")
    return widths


def _is_training_state(contents: object) -> bool:
    return isinstance(contents, Mapping) and isinstance(contents.get("model_config"), Mapping) \
        and isinstance(contents.get("model"), Mapping)


def _training_state_config(path: PathLike, contents: Mapping) -> tuple[dict, float | None]:
    """(hyper-parameters, default_width) of a trainer state file (`csd-fast train`'s last.pt
    and best.pt), which stores the model's config beside its state dict."""
    width = contents.get("default_width")
    if width is not None and not (isinstance(width, (int, float)) and 0.0 < width <= 1.0):
        raise ValueError(f"{path}: training state with a damaged default_width {width!r}")
    return dict(contents["model_config"]), None if width is None else float(width)


def load_checkpoint(
    source: PathLike | Mapping,
    *,
    layout: str = "auto",
    param_key: str | None = None,
    backend: str | None = None,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> EDSRCSD:
    """An EDSRCSD from a checkpoint file or an in-memory state dict in any known layout.

    layout: "auto" or one of csd_fast, edsr_pytorch, basicsr, csd_reference. param_key
    picks the wrapped entry (e.g. "params" over BasicSR's preferred "params_ema").
    overrides pin hyper-parameters (res_scale, rgb_range, img_range, rgb_mean).
    dtype: the model's dtype; default the checkpoint's.

    Trainer state files (`csd-fast train`'s last.pt and best.pt) load with the hyper-parameters
    they store. The model returned carries default_width: the width the checkpoint says its weights
    are meant to run at (save_checkpoint's default_width; a CSD run's best.safetensors
    records its student's), or None when it does not say (older files, other layouts); and
    trained_widths: the widths its training optimised (a CSD run's student width and 1), or
    None when it does not say.
    """
    default_width = trained = None
    if isinstance(source, Mapping):
        contents = source
    else:
        contents, metadata = read_file(source, map_location)
        stored = _stored_config(source, metadata or {})
        default_width = _stored_width(source, metadata or {})
        trained = _stored_trained_widths(source, metadata or {}, default_width)
        if not stored and _is_training_state(contents):
            stored, default_width = _training_state_config(source, contents)
            run = contents.get("config")
            trained = trained_widths_of(run.get("stage"), run.get("width")) if isinstance(run, Mapping) else None
            contents = contents["model"]
        if stored:
            if layout not in ("auto", "csd_fast"):
                raise ValueError(f"{source}: is a csd_fast checkpoint, not layout {layout!r}")
            layout = "csd_fast"
            overrides = {**stored, **{k: v for k, v in overrides.items() if v is not None}}
    state, config = convert_state_dict(contents, layout, param_key=param_key, **overrides)
    dtype = dtype or state["head.weight"].dtype
    device = torch.device(map_location)
    with torch.device(device):
        model = EDSRCSD(**config, backend=backend)
    model.to(dtype=dtype)
    model.load_state_dict(state)
    if default_width is not None:
        _checked_width(model, default_width)  # one the stored n_feats cannot run at: an error now
    for width in trained or ():
        _checked_width(model, width)
    model.default_width = default_width
    model.trained_widths = trained
    return model
