"""Loads csd_fast._C, whose import registers the torch.ops.csd_fast kernels.

The package must stay usable when the compiled kernels cannot run (not built, built for
another CPU level or another torch): the default backend then falls back to plain
PyTorch with one warning that says why, while an explicit request for the kernels
raises that reason as an error.
"""
from __future__ import annotations

import glob
import os
import warnings

import torch

CPU_LEVELS = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}

try:
    from . import _C
    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or an OSError / RuntimeError from a broken build
    _C = None
    _IMPORT_ERROR = exc


def load_problem(module, import_error: Exception | None, package_dir: str) -> str | None:
    """Why the kernels of `module` (the imported _C, or None) cannot run here, or None."""
    in_source_tree = os.path.exists(os.path.join(package_dir, "..", "setup.py"))
    if module is None and in_source_tree and not glob.glob(os.path.join(package_dir, "_C*")):
        return (
            f"csd_fast was imported from its source tree ({package_dir}), which holds no "
            "compiled extension. Run from another directory (and `pytest`, not `python -m "
            "pytest`, which puts the current directory first on sys.path), or build in place "
            "with `pip install --no-build-isolation -e .`."
        )
    if module is None:
        return (
            f"csd_fast's compiled kernels (csd_fast._C) could not be loaded: {import_error}. "
            "Reinstall with `pip install .` (or `pip install --no-build-isolation .` to compile "
            "against the torch you already have); backend='reference' works without them."
        )
    running = torch.backends.cpu.get_cpu_capability()
    if CPU_LEVELS.get(module.cpu_capability, 0) > CPU_LEVELS.get(running, 0):
        return (
            f"csd_fast._C was compiled for {module.cpu_capability} CPUs but this CPU offers "
            f"{running}; rebuild here, or with CSD_FAST_CPU_CAPABILITY={running}"
        )
    if module.torch_version != torch.__version__:
        return (
            f"csd_fast._C was compiled against torch {module.torch_version} but torch "
            f"{torch.__version__} is running; reinstall with `pip install --no-build-isolation .`"
        )
    return None


_PROBLEM = load_problem(_C, _IMPORT_ERROR, os.path.dirname(os.path.abspath(__file__)))
_warned = False


def available() -> bool:
    """The extension imported, so its op schemas exist (they may still be unable to run)."""
    return _C is not None


def usable() -> bool:
    """The kernels can run here."""
    return _PROBLEM is None


def require_extension() -> None:
    if _PROBLEM is not None:
        raise RuntimeError(_PROBLEM)


def default_backend() -> str:
    """"fused" where the kernels can run; else "reference", saying why once per process."""
    global _warned
    if _PROBLEM is None:
        return "fused"
    if not _warned:
        _warned = True
        warnings.warn(f"csd_fast: using backend='reference' (plain PyTorch): {_PROBLEM}",
                      RuntimeWarning, stacklevel=3)
    return "reference"


def build_info() -> dict:
    """What was compiled: kernels present, CUDA and its archs, CPU SIMD level, torch."""
    if _C is None:
        return dict(compiled=False, cuda=False, cuda_archs=[], cpu_capability=None,
                    torch_version=None, torch_running=torch.__version__, error=_PROBLEM)
    archs = [a for a in _C.cuda_archs.split(",") if a]
    return dict(compiled=True, cuda=bool(_C.with_cuda), cuda_archs=archs,
                cpu_capability=_C.cpu_capability, torch_version=_C.torch_version,
                torch_running=torch.__version__, error=_PROBLEM)
