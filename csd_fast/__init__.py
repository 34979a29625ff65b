"""csd_fast: Contrastive Self-Distillation super-resolution with fused kernels.

The names below load on first use (PEP 562), so `import csd_fast` and `csd-fast --help`
do not pay for torch and the compiled kernels until something needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "EDSRCSD": ".archs", "PRESETS": ".archs", "build_info": "._extension", "evaluate": ".evaluation",
    "export_student": ".export", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint",
    "ops": ".ops", "upscale_video": ".video",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "ops" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
