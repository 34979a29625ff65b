"""The compute dtype of inference: --dtype's names, and what "auto" picks on a device.

auto is bfloat16 autocast where it is both native and faster, float32 elsewhere:
- CUDA: bfloat16 where the GPU computes it natively (sm_80 and later), else float32;
- CPU: bfloat16 only where the CPU has bf16 instructions (AVX512-BF16 or AMX, as torch
  detects them) and a small one-time timing of channels-last 3x3 convolutions, the bulk
  of an EDSR forward, finds bfloat16 faster than float32 by a clear margin. The timing
  runs once per process (some 50 ms) and is kept, so auto never picks bfloat16 where
  it measured slower;
- any other device: float32.
"""
from __future__ import annotations

import time

import torch

# name -> autocast dtype (None: run in float32, no autocast)
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES = ("auto", *DTYPES)

# bfloat16 must take at most this fraction of float32's time to be picked: timing noise
# on a busy machine must not tip auto towards the dtype that may round more
BF16_MAX_TIME_RATIO = 0.85

_cpu_choice: torch.dtype | None | bool = False  # False: not decided yet in this process

__all__ = ["CHOICES", "DTYPES", "resolve_dtype"]


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for --dtype `name` on `device` (None: float32)."""
    if name in DTYPES:
        return DTYPES[name]
    if name != "auto":
        raise ValueError(f"dtype must be one of {list(CHOICES)}, got {name!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        return _auto_cpu()
    return None


def cpu_has_native_bf16() -> bool:
    """Whether torch finds bf16 instructions on this CPU (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _auto_cpu() -> torch.dtype | None:
    global _cpu_choice
    if _cpu_choice is False:
        faster = False
        if cpu_has_native_bf16():
            fp32, bf16 = time_cpu_convs()
            faster = bf16 <= BF16_MAX_TIME_RATIO * fp32
        _cpu_choice = torch.bfloat16 if faster else None
    return _cpu_choice


def time_cpu_convs(channels: int = 32, size: int = 96, repeats: int = 5) -> tuple[float, float]:
    """(float32, bfloat16) seconds of a few channels-last 3x3 convs, the best of `repeats`
    timings each, taken in turn so that a burst of load elsewhere hits both: the
    convolutions oneDNN runs for the fused ops, at a size that takes milliseconds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, channels, size, size, generator=generator)
    weight = torch.rand(channels, channels, 3, 3, generator=generator)
    runs = []
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype).contiguous(memory_format=torch.channels_last)
        wd = weight.to(dtype).contiguous(memory_format=torch.channels_last)
        runs.append(lambda xd=xd, wd=wd: [torch.nn.functional.conv2d(xd, wd, padding=1)
                                          for _ in range(4)])
    best = [float("inf")] * len(runs)
    with torch.no_grad():
        for run in runs:
            run()  # oneDNN builds its primitives on the first call
        for _ in range(repeats):
            for i, run in enumerate(runs):
                start = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def _forget_cpu_choice() -> None:
    """For tests: decide again on the next resolve_dtype("auto", "cpu")."""
    global _cpu_choice
    _cpu_choice = False
