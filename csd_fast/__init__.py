"""csd_fast: Contrastive Self-Distillation super-resolution with fused kernels."""
from . import ops
from ._extension import build_info
from .archs import EDSRCSD, PRESETS
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation import evaluate

__version__ = "0.1.0"

__all__ = ["EDSRCSD", "PRESETS", "build_info", "evaluate", "load_checkpoint", "ops",
           "save_checkpoint", "__version__"]
