"""Whole-image inference: tiling for images that do not fit in memory, and the x8
geometric self-ensemble (the "+" of EDSR+).

Tiling is exact, not blended: each output tile is cut from a forward pass over its
LR tile grown by `overlap` pixels on every side, and once `overlap` covers the
network's receptive field radius the cut region never sees the tile's artificial
border, so the tiled result equals the untiled one up to float rounding.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable

import torch

from .archs import EDSRCSD
from .cuda_graphs import GraphCache, weights_key
from .data.patches import augment
from .ops.weight_cache import cached_weights

Forward = Callable[[torch.Tensor], torch.Tensor]


def receptive_radius(model: EDSRCSD) -> int:
    """LR pixels on each side that can influence one output pixel.

    Every 3x3 conv at LR resolution adds one pixel; upsampler convs after the first
    shuffle and the tail run at higher resolution and add 1/scale-so-far each.
    """
    radius = 1 + 2 * model.n_resblocks + 1  # head, blocks, body conv
    resolution = 1
    for factor in model.factors:
        radius += 1 / resolution  # this stage's conv runs before its shuffle
        resolution *= factor
    radius += 1 / resolution  # tail
    return math.ceil(radius)


def tiled(forward: Forward, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """forward(x) computed tile by tile: tiles of tile x tile LR pixels, each run with
    `overlap` extra LR pixels of context on every side."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"need tile >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    n, _, h, w = x.shape
    if tile >= h and tile >= w:
        return forward(x)
    out = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, h), min(right + overlap, w)
            sr = forward(x[:, :, y0:y1, x0:x1])
            if out is None:
                out = sr.new_empty(n, sr.size(1), h * scale, w * scale)
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = sr[
                :, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
    return out


def _transform(x: torch.Tensor, t: int) -> torch.Tensor:
    """The t-th of the 8 flips/transposes (bits: horizontal flip, vertical flip, transpose)."""
    return augment(x, bool(t & 1), bool(t & 2), bool(t & 4))


def _untransform(x: torch.Tensor, t: int) -> torch.Tensor:
    """The inverse of _transform(., t): undo the transpose first, then the flips."""
    if t & 4:
        x = x.transpose(-1, -2)
    return augment(x, bool(t & 1), bool(t & 2), False)


def self_ensemble(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """Mean of forward over the 8 flips/transposes of x, each mapped back."""
    total = None
    for t in range(8):
        y = _untransform(forward(_transform(x, t).contiguous()), t).float()
        total = y if total is None else total + y
    return total / 8


def upscale(model: EDSRCSD, x: torch.Tensor, width: float = 1.0, *, ensemble: bool = False,
            tile: int | None = None, overlap: int | None = None,
            autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = True) -> torch.Tensor:
    """SR of a float batch (N, 3, h, w) in [0, rgb_range]; returns float32, unclamped.

    tile: LR tile size (None: whole image). overlap defaults to the receptive field
    radius, which makes tiling exact. autocast_dtype: torch.bfloat16 / torch.float16
    to run the network under autocast. On CUDA each forward of an input signature seen
    before is replayed from a captured CUDA graph (csd_fast.cuda_graphs); cuda_graphs=False
    runs everything eagerly. The graphs one call uses (its tile shapes) are kept together:
    a repeated call captures nothing. The fused ops pack each weight slice once per call.
    """
    if overlap is None:
        overlap = receptive_radius(model)
    # a network of torch's (not an exported file run by another runtime) can be graphed
    graphs = graph_cache(model) if isinstance(model, torch.nn.Module) and cuda_graphs else None
    key = None if graphs is None else (width, autocast_dtype, weights_key(model))

    def eager(t: torch.Tensor) -> torch.Tensor:
        # autocast's cast cache stays off: it must, inside a CUDA-graph capture, and
        # one forward casts each weight once anyway
        with torch.autocast(t.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None,
                            cache_enabled=False):
            return model(t, width).float()

    def forward(t: torch.Tensor) -> torch.Tensor:
        return eager(t) if graphs is None else graphs(eager, t, key)

    def run(t: torch.Tensor) -> torch.Tensor:
        return tiled(forward, t, model.scale, tile, overlap) if tile else forward(t)

    fused = getattr(model, "backend", None) == "fused"
    packing = cached_weights() if fused else contextlib.nullcontext()
    working_set = contextlib.nullcontext() if graphs is None else graphs.working_set()
    with torch.inference_mode(), packing, working_set:
        return self_ensemble(run, x) if ensemble else run(x)


_GRAPHS: weakref.WeakKeyDictionary[EDSRCSD, GraphCache] = weakref.WeakKeyDictionary()


def graph_cache(model: EDSRCSD) -> GraphCache:
    """The model's captured inference graphs, kept while the model lives."""
    if model not in _GRAPHS:
        _GRAPHS[model] = GraphCache()
    return _GRAPHS[model]


def release_graphs(model: EDSRCSD) -> None:
    """Frees the model's captured inference graphs and their memory pool (the trainer
    does when training resumes after a validation), and forgets the signatures seen."""
    cache = _GRAPHS.pop(model, None)
    if cache is not None:
        cache.clear()
