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
RESERVED_METADATA = ("format", "format_version", "config", DEFAULT_WIDTH_KEY)

PathLike = str | os.PathLike
REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)|reduce for unrecognized function|Unsupported class")


def save_checkpoint(model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None,
                    *, default_width: float | None = None) -> Path:
    """Write model's weights and config to one .safetensors file, atomically.

    metadata: extra str -> str entries stored in the header (read them with read_metadata).
    default_width: the width the weights are meant to run at (a CSD student's width), read
    back as load_checkpoint(...).default_width and used by `csd-fast eval/upscale` when no
    --width is given. Default: the model's own default_width, so a model loaded from such a
    checkpoint and saved again keeps it.
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


# The first bytes of what torch.save writes: a zip archive (since torch 1.6), a pickle of
# protocol 2+ (the legacy format) or, from the oldest versions, a tar archive.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
TAR_MAGIC_AT_257 = b"ustar"


def _format(path: Path) -> str | None:
    """"safetensors", "torch" or None (neither), from the file's first bytes."""
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
    return None


def _not_a_checkpoint(path: Path) -> ValueError:
    with open(path, "rb") as f:
        head = f.read(40)
    if not head:
        why = "the file is empty"
    elif head.startswith(b"version https://git-lfs"):
        why = "it is a Git LFS pointer, not the file itself; fetch it with `git lfs pull`"
    else:
        why = f"it starts with {head!r}"
    return ValueError(f"not a checkpoint: {path} is neither a .safetensors file nor a PyTorch "
                      f"checkpoint written by torch.save ({why})")


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
    records its student's), or None when it does not say (older files, other layouts).
    """
    default_width = None
    if isinstance(source, Mapping):
        contents = source
    else:
        contents, metadata = read_file(source, map_location)
        stored = _stored_config(source, metadata or {})
        default_width = _stored_width(source, metadata or {})
        if not stored and _is_training_state(contents):
            stored, default_width = _training_state_config(source, contents)
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
    model.default_width = default_width
    return model
