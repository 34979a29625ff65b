"""csd_fast::conv3x3_pixel_shuffle: one upsampler stage of EDSR as one op.

    out = pixel_shuffle(conv3x3(input[:, :in], weight[:channels*s*s, :in],
                                bias[:channels*s*s]), s)          # (N, channels, sH, sW)

Pixel shuffle maps conv channel c*s*s + i*s + j to output channel c at sub-pixel
(i, j), so the first channels*s*s rows of the weight give exactly the first `channels`
output channels: the prefix rule of channel splitting holds through upsampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from ._layout import empty_output, grad_to_full

__all__ = ["conv3x3_pixel_shuffle", "conv3x3_pixel_shuffle_reference"]


def conv3x3_pixel_shuffle(input, weight, bias, channels: int, in_channels: int,
                          upscale_factor: int) -> torch.Tensor:
    _extension.require_extension()
    return torch.ops.csd_fast.conv3x3_pixel_shuffle.default(
        input, weight, bias, channels, in_channels, upscale_factor
    )


def conv3x3_pixel_shuffle_reference(input, weight, bias, channels, in_channels, upscale_factor):
    """The same in plain PyTorch."""
    rows = channels * upscale_factor**2
    conv = F.conv2d(input[:, :in_channels], weight[:rows, :in_channels], bias[:rows], padding=1)
    return F.pixel_shuffle(conv, upscale_factor)


def _fake(input, weight, bias, channels, in_channels, upscale_factor):
    torch._check(input.dim() == 4, lambda: "conv3x3_pixel_shuffle: input must be 4-D")
    torch._check(channels * upscale_factor**2 <= weight.size(0),
                 lambda: "conv3x3_pixel_shuffle: channels * s * s beyond the weight's rows")
    n, _, h, w = input.shape
    s = upscale_factor
    return empty_output(input, (n, channels, h * s, w * s))


def _backward_fake(grad_output, input, weight, channels, in_channels, upscale_factor,
                   output_mask):
    none = input.new_empty((0,))
    rows = channels * upscale_factor**2
    return (
        empty_output(input, input.shape) if output_mask[0] else none,
        weight.new_empty((rows, in_channels, 3, 3)) if output_mask[1] else none,
        weight.new_empty((rows,)) if output_mask[2] else none,
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, channels, in_channels, upscale_factor = inputs
    ctx.save_for_backward(input, weight)
    ctx.args = (channels, in_channels, upscale_factor)
    ctx.bias_shape = bias.shape


def _backward(ctx, grad):
    input, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    grad_input, grad_weight, grad_bias = torch.ops.csd_fast.conv3x3_pixel_shuffle_backward.default(
        grad, input, weight, *ctx.args, mask
    )
    return (
        grad_input if mask[0] else None,
        grad_to_full(grad_weight, weight.shape) if mask[1] else None,
        grad_to_full(grad_bias, ctx.bias_shape) if mask[2] else None,
        None, None, None,
    )


def _register() -> None:
    torch.library.register_fake("csd_fast::conv3x3_pixel_shuffle", _fake)
    torch.library.register_fake("csd_fast::conv3x3_pixel_shuffle_backward", _backward_fake)
    torch.library.register_autograd("csd_fast::conv3x3_pixel_shuffle", _backward,
                                    setup_context=_setup_context)


if _extension.available():
    _register()
