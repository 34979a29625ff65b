"""Layout and shape helpers shared by the sliced-conv ops' Python halves."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def caller_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the kernels return (mirrors caller_format in csrc/sliced_conv.cpp):
    channels-last when the input is channels-last and not also plain contiguous."""
    cl = torch.channels_last
    if t.is_contiguous(memory_format=cl) and not t.is_contiguous():
        return cl
    return torch.contiguous_format


def empty_output(like: torch.Tensor, shape, memory_format=None) -> torch.Tensor:
    fmt = caller_format(like) if memory_format is None else memory_format
    return like.new_empty(shape).contiguous(memory_format=fmt)


def grad_to_full(grad_prefix: torch.Tensor, full_shape) -> torch.Tensor:
    """A prefix's gradient zero-padded to the full parameter's shape (the full-size
    weight gets its gradient in [:out, :in] and zeros elsewhere)."""
    if tuple(grad_prefix.shape) == tuple(full_shape):
        return grad_prefix
    pad = []
    for have, full in zip(reversed(grad_prefix.shape), reversed(full_shape)):
        pad += [0, full - have]
    return F.pad(grad_prefix, pad)
