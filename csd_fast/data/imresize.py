"""MATLAB-compatible bicubic ``imresize`` for PyTorch tensors.

The SR benchmarks' LR images were made with MATLAB's ``imresize(hr, 1/s, 'bicubic')``;
PIL's and OpenCV's bicubic differ from it enough to move PSNR by tenths of a dB, so the
evaluation needs MATLAB's exact arithmetic: the a = -0.5 cubic, widened by 1/scale when
shrinking (antialiasing), edge-replicating borders, per-pixel weights normalised to one,
and, for integer images, the intermediate result stored as integers between the passes.
"""
from __future__ import annotations

import math

import torch

KERNEL_WIDTH = 4.0  # support of the cubic kernel, in input pixels, before widening
DENSE_MAX_ELEMENTS = 1 << 22  # largest (out, in) weight matrix applied as a dense matmul


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def contributions(in_len: int, out_len: int, scale: float,
                  antialiasing: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Input indices and weights, each (out_len, taps), of a 1-D MATLAB bicubic resize.

    Computed in float64 on the CPU, as MATLAB does; indices are 0-based and already
    clamped into [0, in_len).
    """
    width = KERNEL_WIDTH
    shrink = antialiasing and scale < 1
    if shrink:
        width = KERNEL_WIDTH / scale
    # Centre of each output pixel in 1-based input coordinates (MATLAB's convention).
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)
    dist = u[:, None] - idx
    weights = scale * cubic(scale * dist) if shrink else cubic(dist)
    weights = weights / weights.sum(1, keepdim=True)
    # Out-of-range taps read the edge pixel. MATLAB's imresize.m clamps its indices like
    # this; mirroring them instead (as several Python ports do) changes the border pixels
    # of the benchmark LR images by up to ~10 grey levels.
    idx = (idx.long() - 1).clamp(0, in_len - 1)
    # Tap columns that are zero for every output pixel only cost time (MATLAB drops them too).
    keep = weights.ne(0).any(0)
    return idx[:, keep], weights[:, keep]


def _matmul_is_exact(x: torch.Tensor) -> bool:
    """False where float32 matmuls may run in TF32/bf16 (a user's global speed setting)."""
    return x.dtype != torch.float32 or torch.get_float32_matmul_precision() == "highest"


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, antialiasing: bool) -> torch.Tensor:
    """Resize x along dim (-1 or -2) with MATLAB's 1-D weights."""
    in_len = x.size(dim)
    idx, weights = contributions(in_len, out_len, scale, antialiasing)
    if out_len * in_len <= DENSE_MAX_ELEMENTS and _matmul_is_exact(x):
        # A dense (out, in) matrix turns the pass into one BLAS matmul: several times faster
        # than gathering while the matrix is small, despite the multiplications by zero.
        rows = torch.arange(out_len)[:, None].expand_as(idx)
        dense = torch.zeros(out_len, in_len, dtype=torch.float64)
        dense.index_put_((rows, idx), weights, accumulate=True)  # clamped taps share a column
        dense = dense.to(device=x.device, dtype=x.dtype)
        return x @ dense.T if dim == -1 else dense @ x
    # Large images: gather every tap of every output pixel, then reduce over the taps.
    taps = idx.size(1)
    weights = weights.to(device=x.device, dtype=x.dtype)
    gathered = x.index_select(dim, idx.to(x.device).flatten()).unflatten(dim, (out_len, taps))
    if dim == -1:
        return (gathered * weights).sum(-1)
    return (gathered * weights[..., None]).sum(-2)  # gathered: (..., out, taps, W)


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x rounded half away from zero and saturated to dtype's range, still floating."""
    info = torch.iinfo(dtype)
    rounded = torch.where(x >= 0, torch.floor(x + 0.5), torch.ceil(x - 0.5))
    return rounded.clamp(info.min, info.max)


def imresize(x: torch.Tensor, scale: float | None = None, *, size: tuple[int, int] | None = None,
             antialiasing: bool = True) -> torch.Tensor:
    """Resize the last two dims of ``x`` (..., H, W) as MATLAB's ``imresize(x, ..., 'bicubic')``.

    Give exactly one of ``scale`` (output ceil(H * scale) x ceil(W * scale)) or
    ``size`` = (out_h, out_w). The result is floating point, never rounded or clamped.
    Integer input (e.g. uint8) returns float32 and follows MATLAB's integer arithmetic: the
    passes run in float64 and the result of the first pass is rounded and saturated to
    the input's type, so rounding the output half away from zero reproduces MATLAB's
    uint8 ``imresize`` exactly.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"imresize expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"imresize needs a tensor of shape (..., H, W), got shape {tuple(x.shape)}")
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if x.is_complex():
        raise TypeError("imresize does not support complex tensors")
    if x.numel() == 0:
        raise ValueError(f"cannot resize an empty image (shape {tuple(x.shape)})")
    in_h, in_w = x.shape[-2:]
    if scale is not None:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
        scales = (scale, scale)
    else:
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"size must be two positive integers (out_h, out_w), got {size!r}")
        out_h, out_w = int(size[0]), int(size[1])
        scales = (out_h / in_h, out_w / in_w)

    integer = None if x.is_floating_point() or x.dtype == torch.bool else x.dtype
    if not x.is_floating_point():
        x = x.to(torch.float64 if integer else torch.float32)
    # MATLAB resizes the dimension with the smaller scale first (H first on a tie).
    passes = [(-2, out_h, scales[0]), (-1, out_w, scales[1])]
    if scales[1] < scales[0]:
        passes.reverse()
    x = _resize_dim(x, *passes[0], antialiasing)
    if integer is not None:
        x = _round_to(x, integer)
    x = _resize_dim(x, *passes[1], antialiasing)
    return x.float() if integer is not None else x
