"""csd_fast::contrastive_distance: the two L1 distances of one VGG layer in CSD's loss.

Given anchor features A (B, C, H, W) (the student), positive P (B, C, H, W) (the
teacher) and K negatives N (K, C, H, W) shared by the whole batch, it returns

    d_pos = mean |P - A|                                  (over B*C*H*W elements)
    d_neg = sum_b sum_k sum_chw |N_k - A_b| / (B*C*H*W)   (the reference's "mean over
                                                           (b, c, h, w) of sum_k")

in one pass over memory, never forming the B x K difference maps. With
`negative_source` (int64, (K,)), the pair (b, k) is left out where
negative_source[k] == b, i.e. an anchor is not pushed away from the upsampled copy of
its own input; entries of -1 (or any value that is not a batch index) leave nothing out.
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["contrastive_distance", "contrastive_distance_reference"]


def contrastive_distance(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_pos, d_neg) as 0-dim tensors of the input dtype; differentiable."""
    _extension.require_extension()
    return torch.ops.csd_fast.contrastive_distance.default(
        anchor, positive, negatives, negative_source
    )


def contrastive_distance_reference(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two distances in plain PyTorch, one negative at a time (peak memory of
    one (B, C, H, W) map instead of B x K of them)."""
    batch = anchor.size(0)
    d_pos = (positive - anchor).abs().mean()
    per_item = anchor.new_zeros(batch, dtype=torch.promote_types(anchor.dtype, torch.float32))
    items = torch.arange(batch, device=anchor.device)
    for k in range(negatives.size(0)):
        dist = (negatives[k : k + 1] - anchor).abs().flatten(1).sum(1)
        if negative_source is not None:
            dist = dist * (negative_source[k] != items)
        per_item = per_item + dist
    d_neg = per_item.sum() / anchor.numel()
    return d_pos, d_neg.to(anchor.dtype)


def _layout(anchor, positive, negatives):
    """The memory format the kernels compute in (mirrors csrc/contrastive_distance.h)."""
    cl = torch.channels_last
    tensors = (anchor, positive, negatives)
    all_cl = all(t.is_contiguous(memory_format=cl) for t in tensors)
    all_contiguous = all(t.is_contiguous() for t in tensors)
    return cl if all_cl and not all_contiguous else torch.contiguous_format


def _contrastive_distance_fake(anchor, positive, negatives, negative_source):
    torch._check(anchor.dim() == 4, lambda: "anchor must be 4-D (B, C, H, W)")
    torch._check(positive.shape == anchor.shape, lambda: "positive must have the anchor's shape")
    torch._check(negatives.dim() == 4, lambda: "negatives must be 4-D (K, C, H, W)")
    return anchor.new_empty(()), anchor.new_empty(())


def _contrastive_distance_backward_fake(
    grad_pos, grad_neg, anchor, positive, negatives, negative_source, positive_rg, negatives_rg
):
    fmt = _layout(anchor, positive, negatives)
    none = anchor.new_empty((0,))

    def like(t):
        return torch.empty_like(t, memory_format=fmt)

    return (
        like(anchor),
        like(positive) if positive_rg else none,
        like(negatives) if negatives_rg else none,
    )


def _setup_context(ctx, inputs, output):
    anchor, positive, negatives, negative_source = inputs
    ctx.save_for_backward(anchor, positive, negatives, negative_source)


def _backward(ctx, grad_pos, grad_neg):
    anchor, positive, negatives, negative_source = ctx.saved_tensors
    needs_anchor, needs_positive, needs_negatives, _ = ctx.needs_input_grad
    grad_a, grad_p, grad_n = torch.ops.csd_fast.contrastive_distance_backward.default(
        grad_pos, grad_neg, anchor, positive, negatives, negative_source,
        needs_positive, needs_negatives,
    )
    return (
        grad_a if needs_anchor else None,
        grad_p if needs_positive else None,
        grad_n if needs_negatives else None,
        None,
    )


def _register() -> None:
    torch.library.register_fake("csd_fast::contrastive_distance", _contrastive_distance_fake)
    torch.library.register_fake(
        "csd_fast::contrastive_distance_backward", _contrastive_distance_backward_fake
    )
    torch.library.register_autograd(
        "csd_fast::contrastive_distance", _backward, setup_context=_setup_context
    )


if _extension.available():  # the schemas exist only once csd_fast._C is loaded
    _register()
