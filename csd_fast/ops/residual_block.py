"""csd_fast::residual_block: EDSR's residual block at a channel width, as one op.

    out = x + res_scale * conv2(relu(conv1(x))),   x = input[:, :channels]

with conv1, conv2 the (channels, channels) prefixes of full-size layers. Forward
keeps only the input and the ReLU output for backward. Where no gradient is needed, a
CPU input goes to residual_block_inference, which keeps nothing and runs the two convs
band by band (csrc/cpu/banded_conv.cpp).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from ._layout import empty_output, grad_to_full

__all__ = ["residual_block", "residual_block_reference"]


def residual_block(input, weight1, bias1, weight2, bias2, channels: int,
                   res_scale: float = 1.0) -> torch.Tensor:
    _extension.require_extension()
    if input.device.type == "cpu" and not _needs_grad(input, weight1, bias1, weight2, bias2):
        return torch.ops.csd_fast.residual_block_inference.default(
            input, weight1, bias1, weight2, bias2, channels, float(res_scale)
        )
    out, _hidden = torch.ops.csd_fast.residual_block.default(
        input, weight1, bias1, weight2, bias2, channels, float(res_scale)
    )
    return out


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def residual_block_reference(input, weight1, bias1, weight2, bias2, channels, res_scale=1.0):
    """The same in plain PyTorch."""
    c = channels
    x = input[:, :c]
    hidden = F.relu(F.conv2d(x, weight1[:c, :c], bias1[:c], padding=1))
    return x + res_scale * F.conv2d(hidden, weight2[:c, :c], bias2[:c], padding=1)


def _fake(input, weight1, bias1, weight2, bias2, channels, res_scale):
    torch._check(input.dim() == 4, lambda: "residual_block: input must be 4-D (N, C, H, W)")
    torch._check(channels <= input.size(1), lambda: "residual_block: channels beyond the input")
    n, _, h, w = input.shape
    out = empty_output(input, (n, channels, h, w))
    hidden = empty_output(input, (n, channels, h, w), torch.channels_last)
    return out, hidden


def _inference_fake(input, weight1, bias1, weight2, bias2, channels, res_scale):
    return _fake(input, weight1, bias1, weight2, bias2, channels, res_scale)[0]


def _backward_fake(grad_output, input, hidden, weight1, weight2, channels, res_scale,
                   output_mask):
    none = input.new_empty((0,))
    c = channels
    return (
        empty_output(input, input.shape) if output_mask[0] else none,
        weight1.new_empty((c, c, 3, 3)) if output_mask[1] else none,
        weight1.new_empty((c,)) if output_mask[2] else none,
        weight2.new_empty((c, c, 3, 3)) if output_mask[3] else none,
        weight2.new_empty((c,)) if output_mask[4] else none,
    )


def _setup_context(ctx, inputs, output):
    input, weight1, bias1, weight2, bias2, channels, res_scale = inputs
    _out, hidden = output
    ctx.mark_non_differentiable(hidden)
    ctx.save_for_backward(input, hidden, weight1, weight2)
    ctx.channels = channels
    ctx.res_scale = res_scale
    ctx.bias_shapes = (bias1.shape, bias2.shape)


def _backward(ctx, grad, _grad_hidden):
    input, hidden, weight1, weight2 = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:5])
    grads = torch.ops.csd_fast.residual_block_backward.default(
        grad, input, hidden, weight1, weight2, ctx.channels, ctx.res_scale, mask
    )
    full_shapes = (input.shape, weight1.shape, ctx.bias_shapes[0], weight2.shape,
                   ctx.bias_shapes[1])
    out = [grad_to_full(g, shape) if need else None
           for g, shape, need in zip(grads, full_shapes, mask)]
    return (*out, None, None)


def _register() -> None:
    torch.library.register_fake("csd_fast::residual_block", _fake)
    torch.library.register_fake("csd_fast::residual_block_backward", _backward_fake)
    torch.library.register_fake("csd_fast::residual_block_inference", _inference_fake)
    torch.library.register_autograd("csd_fast::residual_block", _backward,
                                    setup_context=_setup_context)


if _extension.available():
    _register()
