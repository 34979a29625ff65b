"""The conv ops' cache of packed weights, and which CUDA path ran.

Each conv op reads the prefix weight[:out, :in] of a full-size layer and packs it
(channels-last, the input's dtype, res_scale folded in) before the convolution. Inside
`cached_weights()` the packed prefixes are kept and reused until their source tensor
changes in place, which saves one small copy per conv: worth it for repeated inference
on fixed weights. Outside it (the default) every call packs afresh, because a weight
changed through `.data` (gradcheck, EMA updates) cannot be seen by the cache.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .. import _extension

__all__ = ["cached_weights", "clear_weight_cache", "weight_cache_stats", "weights_cached",
           "cudnn_graph_stats"]


@contextlib.contextmanager
def cached_weights() -> Iterator[None]:
    """Reuse packed weight prefixes within this block. The weights must change only
    through autograd-visible in-place ops (an optimizer step, copy_ under no_grad) while
    it is open, never through `.data`. Leaving the block drops every cached prefix."""
    _extension.require_extension()
    previous = torch.ops.csd_fast.set_weight_cache_enabled(True)
    try:
        yield
    finally:  # an enclosing block keeps the cache (and these entries) on
        torch.ops.csd_fast.set_weight_cache_enabled(previous)


def weights_cached() -> bool:
    """The ops keep packed weights now (inside a cached_weights() block, in any thread):
    derived weights may be kept too."""
    return _extension.available() and torch.ops.csd_fast.weight_cache_enabled()


def clear_weight_cache() -> None:
    _extension.require_extension()
    torch.ops.csd_fast.clear_weight_cache()


def weight_cache_stats() -> dict[str, int]:
    """Hits, misses and entries of the packed-weight cache since it was last cleared."""
    _extension.require_extension()
    hits, misses, entries = torch.ops.csd_fast.weight_cache_stats()
    return {"hits": hits, "misses": misses, "entries": entries}


def cudnn_graph_stats() -> dict[str, int] | None:
    """Counts since the process started of the CUDA conv ops' fused cuDNN graphs: runs,
    calls that fell back to ATen's convolution, plans built, graphs no engine took, plans
    whose engine cuDNN compiled at run time (the training-only fused dgrad), graphs routed
    to ATen without asking cuDNN (odd channel counts, 2^31 or more elements) and built
    plans that failed at their workspace, autotune or execution (each said once in a
    warning). None where the extension has no CUDA kernels."""
    _extension.require_extension()
    if not hasattr(torch.ops.csd_fast, "cudnn_graph_stats"):
        return None
    names = ("runs", "fallbacks", "built", "rejected", "runtime_compiled", "routed", "failed")
    return dict(zip(names, torch.ops.csd_fast.cudnn_graph_stats()))
