"""The negatives' part of CSD's contrastive distance, streamed: memory that does not grow
with the number of negatives K.

For one VGG layer with anchor features A (B, C, H, W) and negatives N_k, the loss needs

    d_neg = sum_b sum_k mask(b, k) * sum_chw |N_k - A_b| / (B*C*H*W)

and its gradient with respect to A, sign_sum / (B*C*H*W) with

    sign_sum[b] = sum_k mask(b, k) * sign(A_b - N_k)

a tensor of A's size whatever K is. `contrastive_negative_sums` returns both statistics
for one chunk of negatives (mask(b, k) = 0 where negative_source[k] == b, as in
csd_fast.ops.contrastive_distance); the chunks' results add up, so the negatives can be
made and freed one chunk at a time. `negative_distance` turns the totals into d_neg with
that gradient, so the backward reads only the sign sum.

The negatives take no gradient here (CSD's are detached bicubic upsamples).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["contrastive_negative_sums", "contrastive_negative_sums_reference", "negative_distance"]


def _check_negatives(negatives: torch.Tensor) -> None:
    if negatives.requires_grad:
        raise ValueError("contrastive_negative_sums: negatives must not require grad: the streamed "
                         "contrastive distance takes no gradient to the negatives (detach them)")


def contrastive_negative_sums(
    anchor: torch.Tensor,
    negatives: torch.Tensor,
    negative_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance_sums (B,), sign_sum (B, C, H, W)) for one chunk of negatives, in float32
    (float64 for float64 features). Not differentiable: the outputs carry no graph;
    negative_distance gives d_neg its gradient."""
    _extension.require_extension()
    _check_negatives(negatives)
    return torch.ops.csd_fast.contrastive_negative_sums.default(
        anchor.detach(), negatives, negative_source
    )


def contrastive_negative_sums_reference(
    anchor: torch.Tensor,
    negatives: torch.Tensor,
    negative_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums in plain PyTorch, one negative at a time (peak memory of a few
    (B, C, H, W) maps whatever K)."""
    _check_negatives(negatives)
    dtype = torch.promote_types(anchor.dtype, torch.float32)
    a = anchor.detach().to(dtype)
    distance_sums = a.new_zeros(a.size(0))
    sign_sum = torch.zeros_like(a)
    items = torch.arange(a.size(0), device=a.device)
    for k in range(negatives.size(0)):
        diff = a - negatives[k : k + 1].to(dtype)
        keep = (items != negative_source[k]).to(dtype) if negative_source is not None \
            else torch.ones_like(distance_sums)
        distance_sums += diff.abs().flatten(1).sum(1) * keep
        sign_sum += diff.sign() * keep.view(-1, 1, 1, 1)
    return distance_sums, sign_sum


class _NegativeDistance(torch.autograd.Function):
    """d_neg = distance_sum / A.numel(), whose gradient with respect to A is
    sign_sum / A.numel(): the value and the gradient of the distance at A."""

    @staticmethod
    def forward(ctx, anchor, distance_sum, sign_sum):
        ctx.save_for_backward(sign_sum)
        ctx.numel, ctx.anchor_dtype = anchor.numel(), anchor.dtype
        return distance_sum / anchor.numel()

    @staticmethod
    def backward(ctx, grad):
        (sign_sum,) = ctx.saved_tensors
        return (sign_sum * (grad / ctx.numel)).to(ctx.anchor_dtype), None, None


def negative_distance(anchor: torch.Tensor, distance_sum: torch.Tensor,
                      sign_sum: torch.Tensor) -> torch.Tensor:
    """d_neg of `anchor` from the totals over all chunks of negatives: distance_sum, the
    0-dim sum of contrastive_negative_sums' distance_sums, and sign_sum. Differentiable in
    anchor; the backward reads sign_sum alone."""
    if sign_sum.shape != anchor.shape or distance_sum.dim() != 0:
        raise ValueError(f"negative_distance: need a 0-dim distance_sum and a sign_sum of the "
                         f"anchor's shape {tuple(anchor.shape)}, got {tuple(distance_sum.shape)} "
                         f"and {tuple(sign_sum.shape)}")
    return _NegativeDistance.apply(anchor, distance_sum, sign_sum)


def _layout(anchor):
    """The memory format the kernels compute in (mirrors csrc/contrastive_distance.h)."""
    cl = torch.channels_last
    if anchor.is_contiguous(memory_format=cl) and not anchor.is_contiguous():
        return cl
    return torch.contiguous_format


def _contrastive_negative_sums_fake(anchor, negatives, negative_source):
    torch._check(anchor.dim() == 4, lambda: "anchor must be 4-D (B, C, H, W)")
    torch._check(negatives.dim() == 4, lambda: "negatives must be 4-D (K, C, H, W)")
    dtype = torch.float64 if anchor.dtype == torch.float64 else torch.float32
    return (anchor.new_empty((anchor.size(0),), dtype=dtype),
            torch.empty_like(anchor, dtype=dtype, memory_format=_layout(anchor)))


if _extension.available():  # the schema exists only once csd_fast._C is loaded
    torch.library.register_fake("csd_fast::contrastive_negative_sums",
                                _contrastive_negative_sums_fake)
