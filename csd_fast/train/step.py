"""One optimisation step of a training stage, run eagerly or replayed from a CUDA graph.

A step is forward (student and teacher), the loss, backward, optional clipping and the
optimizer. Eagerly that is some thousand kernel launches, each costing the CPU more
than the GPU needs for it at CSD's patch sizes; captured once in a CUDA graph and
replayed, the whole step is one launch and the GPU never waits for Python.

What a graph fixes at capture is kept fixed or fed through buffers: the batch and the
negatives' indices (or, with negatives=dataset, the negatives' LR patches) are copied into
static tensors before each replay (the indices are still drawn on the CPU from the run's
seed, so a graph run and an eager run see the same negatives), and the learning rate is
captured as a number, so the step is recaptured when the scheduler changes it. Graphs
need a single process (DDP's collectives run eagerly), no fp16 loss scaling (GradScaler
reads the gradients on the host), and CUDA.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..losses import CSDLoss, draw_negative_sources

# eager steps on a side stream before capture: cuDNN plans, allocator pools and lazily
# created optimizer state all exist by the time the graph records the step
WARMUP_STEPS = 3


class TrainStep:
    """Callable (lr, hr, generator[, pool, pool_offset, negatives]) -> the loss terms
    (tensors). negatives: the step's negatives as LR images drawn outside the batch
    (negatives=dataset, on lr's device); None draws them from the batch (or pool).

    After each call, `updated` says whether the optimizer stepped: fp16 loss scaling skips
    the update of a step whose scaled gradients overflowed (and lowers the scale)."""

    def __init__(self, net: nn.Module, params: list[nn.Parameter], loss_fn: CSDLoss,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scale: int,
                 amp_dtype: torch.dtype | None, grad_clip: float | None,
                 check_finite: Callable[[dict], None], use_graph: bool = False,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.net, self.params, self.loss_fn = net, params, loss_fn
        self.optimizer, self.scaler, self.scale = optimizer, scaler, scale
        self.amp_dtype, self.grad_clip = amp_dtype, grad_clip
        self.check_finite, self.reduce = check_finite, reduce
        self.use_graph = use_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_key: tuple | None = None
        self._static: dict = {}
        self._eager_steps = 0
        self.updated = False
        set_capturable(optimizer, use_graph)

    def negative_sources(self, batch: int, generator: torch.Generator) -> torch.Tensor | None:
        if not self.loss_fn.lambda_c:
            return None
        return draw_negative_sources(batch, self.loss_fn.neg_num, generator)

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor, generator: torch.Generator,
                 pool: torch.Tensor | None = None, pool_offset: int = 0,
                 negatives: torch.Tensor | None = None) -> dict:
        sources = None if negatives is not None else \
            self.negative_sources((lr if pool is None else pool).size(0), generator)
        if not self.use_graph:
            return self._eager(lr, hr, sources, pool, pool_offset, negatives)
        if self._eager_steps < WARMUP_STEPS:
            self._eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                terms = self._eager(lr, hr, sources, pool, pool_offset, negatives)
            torch.cuda.current_stream().wait_stream(side)
            return terms
        key = (tuple(lr.shape), tuple(hr.shape), lr.dtype,
               None if negatives is None else tuple(negatives.shape),
               tuple(g["lr"] for g in self.optimizer.param_groups))
        if key != self._graph_key:
            self._capture(lr, hr, sources, negatives, key)
        self._static["lr"].copy_(lr, non_blocking=True)
        self._static["hr"].copy_(hr, non_blocking=True)
        if sources is not None:
            self._static["sources"].copy_(sources)  # K indices: a tiny synchronous copy
        if negatives is not None:
            self._static["negatives"].copy_(negatives, non_blocking=True)
        self._graph.replay()
        self.updated = True  # graphs run without loss scaling (graph_supported), so never skip
        self.check_finite(self._static["terms"])
        return self._static["terms"]

    def _forward_loss(self, lr, hr, sources, pool=None, pool_offset=0, negatives=None) -> dict:
        # autocast's weight cache must stay off under capture: its casts belong in the graph
        with torch.autocast(lr.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=not self.use_graph):
            student, teacher = self.net(lr)
            return self.loss_fn(student.float(), None if teacher is None else teacher.float(),
                                hr, lr, self.scale, lr_pool=pool, pool_offset=pool_offset,
                                negative_sources=sources, negatives_lr=negatives,
                                reduce=self.reduce)

    def _backward_and_update(self, total: torch.Tensor) -> None:
        self.scaler.scale(total).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _eager(self, lr, hr, sources, pool, pool_offset, negatives) -> dict:
        terms = self._forward_loss(lr, hr, sources, pool, pool_offset, negatives)
        self.check_finite(terms)  # before the update: the weights stay the last good ones
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self._backward_and_update(terms["total"])
        # the scaler lowers its scale exactly when it skipped the optimizer's step
        self.updated = scale is None or self.scaler.get_scale() >= scale
        return terms

    def _capture(self, lr, hr, sources, negatives, key) -> None:
        """Records one whole step into a new graph; the batch and negatives given are its
        first replay's inputs."""
        self._graph = None  # the old graph's memory pool goes back to the allocator
        static = {"lr": lr.clone(), "hr": hr.clone()}
        if sources is not None:
            static["sources"] = sources.to(lr.device)
        if negatives is not None:
            static["negatives"] = negatives.to(lr.device, copy=True)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the pinned-memory thread of the DataLoader allocates host memory
        # while this thread captures, which the default (global) mode counts as an
        # unsafe call and turns into a failed capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            terms = self._forward_loss(static["lr"], static["hr"], static.get("sources"),
                                       negatives=static.get("negatives"))
            self._backward_and_update(terms["total"])
        static["terms"] = terms
        self._graph, self._graph_key, self._static = graph, key, static


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """An optimizer (and its loaded state) ready for graph capture, or back to eager:
    capturable Adam keeps its step counts on the parameters' device."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.to(param.device if capturable else "cpu", torch.float32)


def graph_supported(device: torch.device, world_size: int, amp: str | None) -> str | None:
    """Why a CUDA-graph step cannot run in this setting, or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if world_size > 1:
        return "DDP's collectives run eagerly"
    if amp == "fp16":
        return "fp16 loss scaling reads gradients on the host"
    return None
