"""The one place a device name becomes a torch.device, for every command and library entry."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device, index: int | None = None) -> torch.device:
    """"auto" is CUDA where a GPU is visible, else the CPU; asking for CUDA without one is an
    input error (ValueError), raised before any work starts."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} requested but no CUDA device is available")
        if index is not None and device.index is None:
            device = torch.device("cuda", index)
    return device
