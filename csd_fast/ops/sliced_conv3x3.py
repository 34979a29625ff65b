"""csd_fast::sliced_conv3x3: one channel-sliced 3x3 conv of EDSR with its epilogue.

    out = relu?(conv3x3(input[:, :in], weight[:out, :in], bias[:out]))       (relu)
    out = residual + res_scale * conv3x3(input[:, :in], weight[:out, :in], bias[:out])

Gradients land in the prefix of the full-size weight and bias, zeros elsewhere, as
slicing a parameter in plain PyTorch does; no copy of the full weight is made.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from ._layout import empty_output, grad_to_full

__all__ = ["sliced_conv3x3", "sliced_conv3x3_reference"]


def sliced_conv3x3(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out_channels: int,
    in_channels: int,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    res_scale: float = 1.0,
) -> torch.Tensor:
    _extension.require_extension()
    return torch.ops.csd_fast.sliced_conv3x3.default(
        input, weight, bias, out_channels, in_channels, relu, residual, float(res_scale)
    )


def sliced_conv3x3_reference(input, weight, bias, out_channels, in_channels, relu=False,
                             residual=None, res_scale=1.0):
    """The same in plain PyTorch."""
    out = F.conv2d(input[:, :in_channels], weight[:out_channels, :in_channels],
                   bias[:out_channels], padding=1)
    if relu:
        out = F.relu(out)
    if residual is not None:
        out = residual + res_scale * out
    return out


def _fake(input, weight, bias, out_channels, in_channels, relu, residual, res_scale):
    torch._check(input.dim() == 4, lambda: "sliced_conv3x3: input must be 4-D (N, C, H, W)")
    torch._check(out_channels <= weight.size(0) and in_channels <= weight.size(1),
                 lambda: "sliced_conv3x3: channels beyond the weight")
    n, _, h, w = input.shape
    return empty_output(input, (n, out_channels, h, w))


def _backward_fake(grad_output, input, weight, output, out_channels, in_channels, relu,
                   res_scale, output_mask):
    none = input.new_empty((0,))
    return (
        empty_output(input, input.shape) if output_mask[0] else none,
        weight.new_empty((out_channels, in_channels, 3, 3)) if output_mask[1] else none,
        weight.new_empty((out_channels,)) if output_mask[2] else none,
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, out_channels, in_channels, relu, residual, res_scale = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.channels = (out_channels, in_channels)
    ctx.bias_shape = bias.shape
    ctx.relu = relu
    ctx.res_scale = res_scale if residual is not None else 1.0


def _backward(ctx, grad):
    input, weight, output = ctx.saved_tensors
    needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    grad_input, grad_weight, grad_bias = torch.ops.csd_fast.sliced_conv3x3_backward.default(
        grad, input, weight, output, *ctx.channels, ctx.relu, ctx.res_scale,
        [needs_input, needs_weight, needs_bias],
    )
    grad_residual = grad if ctx.needs_input_grad[6] else None
    return (
        grad_input if needs_input else None,
        grad_to_full(grad_weight, weight.shape) if needs_weight else None,
        grad_to_full(grad_bias, ctx.bias_shape) if needs_bias else None,
        None, None, None, grad_residual, None,
    )


def _register() -> None:
    torch.library.register_fake("csd_fast::sliced_conv3x3", _fake)
    torch.library.register_fake("csd_fast::sliced_conv3x3_backward", _backward_fake)
    torch.library.register_autograd("csd_fast::sliced_conv3x3", _backward,
                                    setup_context=_setup_context)


if _extension.available():
    _register()
