"""Reading and writing checkpoint files.

The project's own format is one .safetensors file: the EDSRCSD weights, and in the
header metadata the hyper-parameters that rebuild the model. Other files go through
torch.load(weights_only=True) only, so loading never runs code from the file.
"""
from __future__ import annotations

import json
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
RESERVED_METADATA = ("format", "format_version", "config")

PathLike = str | os.PathLike
REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)|reduce for unrecognized function|Unsupported class")


def save_checkpoint(model: nn.Module, path: PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write model's weights and config to one .safetensors file, atomically.

    metadata: extra str -> str entries stored in the header (read them with read_metadata).
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


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # Sniff other names: 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size <= path.stat().st_size - 8


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
    if _is_safetensors(path):
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
    """
    if isinstance(source, Mapping):
        contents = source
    else:
        contents, metadata = read_file(source, map_location)
        stored = _stored_config(source, metadata or {})
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
    return model
