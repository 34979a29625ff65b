"""Training: config, the stage loop (teacher / csd / student), checkpoints, DDP.

The config loads eagerly (it needs no torch: `csd-fast train --help` lists its keys at
once); the loop loads on first use of `train` or `NonFiniteLossError`.
"""
from __future__ import annotations

import importlib

from .config import ConfigError, TrainConfig, load_config, save_config

__all__ = ["ConfigError", "NonFiniteLossError", "TrainConfig", "load_config", "save_config", "train"]


def __getattr__(name: str):
    if name in ("train", "NonFiniteLossError"):
        value = getattr(importlib.import_module(".trainer", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
