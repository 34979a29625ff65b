"""CSD's loss: L1 to HR for student and teacher plus the contrastive term.

    L = L1(S, HR) + lambda_T * L1(T, HR) + lambda_C * sum_j w_j * d(T_j, S_j) / (d(S_j, N_j) + eps)

with VGG19 features j = relu1_1 .. relu5_1 (docs/method.md, section 2). The negatives go
through VGG19 in chunks, without a graph: each chunk adds to per-layer sums (the distances
to the anchors and the anchor-sized sum of their signs, csd_fast.ops.negative_sums) and is
freed before the next, so memory does not grow with the number of negatives K and the
B x K pairs are never materialised.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension
from ..ops import contrastive_negative_sums, contrastive_negative_sums_reference, negative_distance
from .vgg import VGG19Features

LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
# the kernel of the per-chunk sums: csd_fast's op, or plain PyTorch (no compiled kernels needed)
NEGATIVE_SUMS = {"fused": contrastive_negative_sums,
                 "reference": contrastive_negative_sums_reference}


def draw_negative_sources(batch: int, count: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Which `count` of `batch` items serve as negatives: randperm(batch)[:count] on the
    CPU generator, as the reference draws them (so it needs batch >= count)."""
    if not 1 <= count <= batch:
        raise ValueError(f"neg_num={count} negatives are drawn from the batch, which has {batch} "
                         f"images: need 1 <= neg_num <= batch size")
    return torch.randperm(batch, generator=generator)[:count]


def upsample_negatives(lr: torch.Tensor, source: torch.Tensor | None, scale: int) -> torch.Tensor:
    """lr[source] (all of lr for None) bicubic-upsampled (PyTorch's bicubic, as the
    reference), detached."""
    with torch.no_grad():
        return F.interpolate(lr if source is None else lr[source], scale_factor=scale,
                             mode="bicubic", align_corners=False)


def make_negatives(lr: torch.Tensor, scale: int, count: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` LR images of the batch, bicubic-upsampled and detached; and which batch
    item each came from (on lr's device)."""
    source = draw_negative_sources(lr.size(0), count, generator).to(lr.device)
    return upsample_negatives(lr, source, scale), source


class ContrastiveLoss(nn.Module):
    """sum_j w_j * d(T_j, S_j) / (d(S_j, N_j) + eps) over VGG layers j.

    d(T, S) = mean |T - S|; d(S, N) = mean over (b, c, h, w) of sum_k |N_k - S_b|, the
    reference's "ratio of batch means". negative_source (see csd_fast.ops) leaves each
    anchor's own upsampled input out of its negatives; None keeps the reference
    behaviour, where it can be among them.

    The K negatives run through VGG19 neg_chunk at a time (None: as many as the batch has
    anchors, so they never hold more VGG19 activations at once than the batch's own pass),
    with no graph; the backward reads only anchor-sized sign sums (csd_fast.ops.negative_sums).
    The chunking changes nothing beyond rounding. backend picks the chunk sums' kernel:
    fused (csd_fast's op) or reference (plain PyTorch).
    """

    def __init__(self, vgg: VGG19Features, layer_weights=LAYER_WEIGHTS, eps: float = 1e-7,
                 backend: str | None = None, neg_chunk: int | None = None):
        super().__init__()
        if backend is None:  # the fused op where the kernels can run here
            backend = _extension.default_backend()
        if backend not in NEGATIVE_SUMS:
            raise ValueError(f"backend must be one of {sorted(NEGATIVE_SUMS)}, got {backend!r}")
        if len(layer_weights) != 5:
            raise ValueError(f"need 5 layer weights (relu1_1 .. relu5_1), got {len(layer_weights)}")
        if neg_chunk is not None and neg_chunk < 1:
            raise ValueError(f"neg_chunk must be >= 1 (or None: the batch size), got {neg_chunk}")
        self.vgg = vgg
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.eps = eps
        self.backend = backend
        self.neg_chunk = neg_chunk

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, negatives: torch.Tensor,
                negative_source: torch.Tensor | None = None,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                negatives_scale: int = 1) -> torch.Tensor:
        """reduce maps this batch's (layers, 2) tensor of (d_pos, d_neg) to the global batch's
        under DDP: a ratio of batch means is only exact when both means span the whole batch.
        negatives_scale > 1: the negatives come at 1/negatives_scale of the student's size and
        are bicubic-upsampled (upsample_negatives) one chunk at a time, so that not even the
        K upsampled images exist at once."""
        c, h, w = negatives.shape[1:] if negatives.dim() == 4 else (None, None, None)
        if student.shape != teacher.shape or negatives.dim() != 4 or \
                (c, h * negatives_scale, w * negatives_scale) != tuple(student.shape[1:]):
            raise ValueError(f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and "
                             f"negatives {tuple(negatives.shape)} upsampled x{negatives_scale} "
                             f"must share (C, H, W)")
        if negatives.requires_grad:
            raise ValueError("negatives must not require grad: the contrastive loss streams them "
                             "through VGG19 without a graph (CSD's are detached upsampled inputs)")
        anchors, d_pos = self.anchors_and_positive_distances(student, teacher)
        sums = self.negative_sums(anchors, negatives.to(student.dtype), negative_source,
                                  self.neg_chunk or student.size(0), negatives_scale)
        distances = torch.stack([
            torch.stack([pos, negative_distance(a, dist.sum(), signs)])
            for a, pos, (dist, signs) in zip(anchors, d_pos, sums)])
        if reduce is not None:  # one collective for all layers
            distances = reduce(distances)
        loss = distances.new_zeros(())
        for weight, (d_pos, d_neg) in zip(self.layer_weights, distances):
            loss = loss + weight * d_pos / (d_neg + self.eps)
        return loss

    def anchors_and_positive_distances(self, student: torch.Tensor, teacher: torch.Tensor
                                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The student's VGG19 features (with graph) and d_pos per layer; the teacher's
        features are freed on return (d_pos's graph keeps what its backward needs)."""
        if teacher.requires_grad:  # one VGG pass with graph for the two that take gradient
            features = self.vgg(torch.cat([student, teacher]))
            anchors = [f[:student.size(0)] for f in features]
            positives = [f[student.size(0):] for f in features]
        else:
            anchors = self.vgg(student)
            with torch.no_grad():
                positives = self.vgg(teacher)
        return anchors, [torch.mean((p - a).abs(), dtype=_sum_dtype(a))
                         for a, p in zip(anchors, positives)]

    def negative_sums(self, anchors: list[torch.Tensor], negatives: torch.Tensor,
                      negative_source: torch.Tensor | None, chunk: int, scale: int = 1
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (per-anchor distance sums, sign sum) over all K negatives, which go
        (upsampled by scale) through VGG19 `chunk` at a time with no graph. A fixed K and
        chunk give a fixed sequence of kernels, so the loop captures in a CUDA graph."""
        sums_of = NEGATIVE_SUMS[self.backend]
        totals: list = [None] * len(anchors)
        with torch.no_grad():
            for start in range(0, negatives.size(0), chunk):
                source = None if negative_source is None else negative_source[start:start + chunk]
                images = negatives[start:start + chunk]
                if scale != 1:
                    images = upsample_negatives(images, None, scale)
                self._add_chunk(totals, sums_of, anchors, images, source)
        return totals

    def _add_chunk(self, totals, sums_of, anchors, images, source) -> None:
        """One chunk's sums added into totals, layer by layer; its features are freed on return."""
        for layer, (anchor, features) in enumerate(zip(anchors, self.vgg(images))):
            dist, signs = sums_of(anchor, features.to(anchor.dtype), source)
            if totals[layer] is None:
                totals[layer] = (dist, signs)
            else:
                totals[layer][0].add_(dist)
                totals[layer][1].add_(signs)


def _sum_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 sums for float32, bfloat16 and float16 features; float64 for float64."""
    return torch.promote_types(t.dtype, torch.float32)


class CSDLoss(nn.Module):
    """The full CSD objective; returns a dict of the total and its terms.

    lambda_c = 0 and lambda_t = 0 give the student-only L1 baseline (VGG unused).
    neg_chunk: negatives per VGG19 pass (ContrastiveLoss).
    """

    def __init__(self, vgg: VGG19Features | None, lambda_c: float = 200.0, lambda_t: float = 1.0,
                 neg_num: int = 10, t_detach: bool = True, exclude_self: bool = False,
                 backend: str | None = None, neg_chunk: int | None = None):
        super().__init__()
        if lambda_c and vgg is None:
            raise ValueError("lambda_c > 0 needs the VGG19 feature extractor")
        self.contrastive = ContrastiveLoss(vgg, backend=backend, neg_chunk=neg_chunk) \
            if lambda_c else None
        self.lambda_c, self.lambda_t = float(lambda_c), float(lambda_t)
        self.neg_num, self.t_detach, self.exclude_self = neg_num, t_detach, exclude_self

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | None, hr: torch.Tensor,
                lr: torch.Tensor, scale: int, generator: torch.Generator | None = None, *,
                lr_pool: torch.Tensor | None = None, pool_offset: int = 0,
                negative_sources: torch.Tensor | None = None,
                negatives_lr: torch.Tensor | None = None,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """Under DDP, lr_pool is the global batch's LR (this rank's lr is
        lr_pool[pool_offset : pool_offset + B]): the negatives are drawn from it with the same
        generator state on every rank, as one process would draw them; reduce averages the
        contrastive distances over ranks (see ContrastiveLoss.forward). negative_sources,
        indices into the pool (or lr) on its device, replaces the draw from `generator`:
        a CUDA-graph step passes them in a fixed buffer.

        negatives_lr (K, C, h, w), any K, replaces the negatives from the batch
        (negatives=dataset): LR images drawn from outside the batch, every one a negative of
        every anchor. No pair is left out here; exclude_self is the draw's part, which takes
        none of them from an anchor's image (csd_fast.train.sampling.DatasetNegatives)."""
        terms = {"l1_student": F.l1_loss(student, hr)}
        total = terms["l1_student"]
        if self.lambda_t:
            terms["l1_teacher"] = F.l1_loss(teacher, hr)
            total = total + self.lambda_t * terms["l1_teacher"]
        if self.lambda_c:
            local = None
            if negatives_lr is not None:
                negatives = negatives_lr.to(student.device)
            else:
                pool = lr if lr_pool is None else lr_pool
                if negative_sources is None:
                    negative_sources = draw_negative_sources(pool.size(0), self.neg_num, generator)
                source = negative_sources.to(pool.device)
                negatives = pool[source].detach()
                if self.exclude_self:  # pool index -> this batch's index; -1: not an anchor here
                    local = source - pool_offset
                    local = torch.where((local >= 0) & (local < student.size(0)), local,
                                        torch.full_like(local, -1))
            positive = teacher.detach() if self.t_detach else teacher
            # the LR negatives, upsampled inside the loss one chunk at a time
            terms["contrastive"] = self.contrastive(student, positive, negatives, local, reduce,
                                                    negatives_scale=scale)
            total = total + self.lambda_c * terms["contrastive"]
        terms["total"] = total
        return terms
