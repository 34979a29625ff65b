"""Loads csd_fast._C, whose import registers the torch.ops.csd_fast kernels."""
from __future__ import annotations

import glob
import os

import torch

CPU_LEVELS = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}

try:
    from . import _C
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # the package still works with backend="reference"
    _C = None
    _IMPORT_ERROR = exc


def _load_problem() -> str | None:
    """Why the kernels cannot run here, or None. Decided once, at import."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    in_source_tree = os.path.exists(os.path.join(package_dir, "..", "setup.py"))
    if _C is None and in_source_tree and not glob.glob(os.path.join(package_dir, "_C*")):
        return (
            f"csd_fast was imported from its source tree ({package_dir}), which holds no "
            "compiled extension. Run from another directory (and `pytest`, not `python -m "
            "pytest`, which puts the current directory first on sys.path), or build in place "
            "with `pip install --no-build-isolation -e .`."
        )
    if _C is None:
        return (
            f"csd_fast's compiled kernels (csd_fast._C) could not be loaded: {_IMPORT_ERROR}. "
            "Reinstall with `pip install .` (or `pip install --no-build-isolation .` to compile "
            "against the torch you already have); backend='reference' works without them."
        )
    running = torch.backends.cpu.get_cpu_capability()
    if CPU_LEVELS.get(_C.cpu_capability, 0) > CPU_LEVELS.get(running, 0):
        return (
            f"csd_fast._C was compiled for {_C.cpu_capability} CPUs but this CPU offers "
            f"{running}; rebuild here, or with CSD_FAST_CPU_CAPABILITY={running}"
        )
    if _C.torch_version != torch.__version__:
        return (
            f"csd_fast._C was compiled against torch {_C.torch_version} but torch "
            f"{torch.__version__} is running; reinstall with `pip install --no-build-isolation .`"
        )
    return None


_PROBLEM = _load_problem()


def available() -> bool:
    return _C is not None


def require_extension() -> None:
    if _PROBLEM is not None:
        raise RuntimeError(_PROBLEM)


def build_info() -> dict:
    """What was compiled: kernels present, CUDA and its archs, CPU SIMD level, torch."""
    if _C is None:
        return dict(compiled=False, cuda=False, cuda_archs=[], cpu_capability=None,
                    torch_version=None, torch_running=torch.__version__, error=_PROBLEM)
    archs = [a for a in _C.cuda_archs.split(",") if a]
    return dict(compiled=True, cuda=bool(_C.with_cuda), cuda_archs=archs,
                cpu_capability=_C.cpu_capability, torch_version=_C.torch_version,
                torch_running=torch.__version__, error=_PROBLEM)
