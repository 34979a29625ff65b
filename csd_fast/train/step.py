"""One optimisation step of a training stage, run eagerly or replayed from a CUDA graph.

A step is forward (student and teacher), the loss, backward, optional clipping and the
optimizer. Eagerly that is some thousand kernel launches, each costing the CPU more
than the GPU needs for it at CSD's patch sizes; captured once in a CUDA graph and
replayed, the whole step is one launch and the GPU never waits for Python.

What a graph fixes at capture is kept fixed or fed through device buffers, copied in
before each replay without a host sync:
- the batch, the negatives' indices (drawn on the CPU from the run's seed, so a graph
  run and an eager run see the same negatives) and, with negatives=dataset, the
  negatives' LR patches;
- the learning rate: the captured optimizer step reads a device tensor that is filled
  from the param group's lr before each replay, so a schedule that changes it every step
  (cosine, warm-up) replays the one graph; the scheduler and checkpoints see plain
  floats as in eager steps.
A new batch shape (or the first call) is met with WARMUP_STEPS eager steps on a side
stream, then a capture: lazily built state (cuDNN plans, allocator pools, optimizer
state) exists before the graph records the step.

Non-finite losses: an eager step checks the loss before its update (a host sync). A
replayed step checks on the device instead: the optimizer (switched to its fused
implementation, which takes GradScaler's `found_inf`) skips its update from the first
non-finite loss on, and the flag is read back every NONFINITE_READ_EVERY replays (and at
`check_nonfinite()`), when `check_finite` raises with that step's loss terms: the
weights are those before the first bad step, as eagerly. After every step, eager or
replayed, the model's `weights_changed()` drops what was derived from the old weights
(a replay updates them without bumping their version counters).

Graphs need a single process (DDP's collectives run eagerly), no fp16 loss scaling
(GradScaler reads the gradients on the host), and CUDA.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..cuda_graphs import Record, memory_format, static_copy
from ..losses import CSDLoss, draw_negative_sources

# eager steps on a side stream before each capture: cuDNN plans, allocator pools and
# lazily created optimizer state all exist by the time the graph records the step
WARMUP_STEPS = 3
# replays between reads of the device's non-finite flag (each read is a host sync)
NONFINITE_READ_EVERY = 16


class CudaStepGraphs:
    """How a step runs off the main stream and is recorded on CUDA; tests pass a CPU
    stand-in with the same two methods."""

    def warm_up(self, run: Callable[[], dict]) -> dict:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = run()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def record(self, run: Callable[[], dict]) -> tuple[Callable[[], None], dict]:
        graph = torch.cuda.CUDAGraph()
        # thread_local: the pinned-memory thread of the DataLoader allocates host memory
        # while this thread captures, which the default (global) mode counts as an
        # unsafe call and turns into a failed capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = run()
        return graph.replay, out


class TrainStep:
    """Callable (lr, hr, generator[, pool, pool_offset, negatives]) -> the loss terms
    (tensors). negatives: the step's negatives as LR images drawn outside the batch
    (negatives=dataset, on lr's device); None draws them from the batch (or pool).

    After each call, `updated` says whether the optimizer stepped: fp16 loss scaling skips
    the update of a step whose scaled gradients overflowed (and lowers the scale). While
    check_finite runs, `steps_since_nonfinite` says how many steps ago the bad one ran
    (0 eagerly; replayed steps are checked in arrears)."""

    def __init__(self, net: nn.Module, params: list[nn.Parameter], loss_fn: CSDLoss,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scale: int,
                 amp_dtype: torch.dtype | None, grad_clip: float | None,
                 check_finite: Callable[[dict], None], use_graph: bool = False,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 graphs: CudaStepGraphs | None = None):
        self.net, self.params, self.loss_fn = net, params, loss_fn
        self.optimizer, self.scaler, self.scale = optimizer, scaler, scale
        self.amp_dtype, self.grad_clip = amp_dtype, grad_clip
        self.check_finite, self.reduce = check_finite, reduce
        self.use_graph = use_graph
        self.graphs = graphs or CudaStepGraphs()
        # the models whose derived weights (folded tail, packed prefixes) a step outdates
        self._changed = [m.weights_changed for m in net.modules() if hasattr(m, "weights_changed")]
        self._replay: Callable[[], None] | None = None
        self._graph_key: tuple | None = None
        self._warm: tuple = (None, 0)  # (key, eager warm-up steps run for it)
        self._static: dict = {}
        self._unread = 0  # replays since the non-finite flag was last read
        self._terms_like: dict = {}  # the last warm-up step's terms
        self.steps_since_nonfinite = 0
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
        key = (tuple(lr.shape), memory_format(lr), tuple(hr.shape), lr.dtype,
               None if negatives is None else tuple(negatives.shape))
        if key != self._graph_key:
            # the old graph's flag first: its skipped updates must not be followed by eager ones
            self.check_nonfinite()
            warmed_key, warmed = self._warm
            warmed = warmed if warmed_key == key else 0
            if warmed < WARMUP_STEPS:
                self._warm = (key, warmed + 1)
                terms = self.graphs.warm_up(
                    lambda: self._eager(lr, hr, sources, pool, pool_offset, negatives))
                self._terms_like = {k: v.detach() for k, v in terms.items()}
                return terms
            self._capture(lr, hr, sources, negatives, key)
        static = self._static
        static["lr"].copy_(lr, non_blocking=True)
        static["hr"].copy_(hr, non_blocking=True)
        if sources is not None:
            static["sources"].copy_(sources)  # K indices: a tiny synchronous copy
        if negatives is not None:
            static["negatives"].copy_(negatives, non_blocking=True)
        for value, group in zip(static["group_lr"], self.optimizer.param_groups):
            value.fill_(float(group["lr"]))
        self._replay()
        self._weights_changed()
        self.updated = True  # as far as the host knows: see check_nonfinite
        self._unread += 1
        if self._unread >= NONFINITE_READ_EVERY:
            self.check_nonfinite()
        return static["terms"]

    def check_nonfinite(self) -> None:
        """Reads the replayed steps' non-finite flag (a host sync); where one was set,
        check_finite raises with the first bad step's terms."""
        self._unread = 0
        static = self._static
        if static and bool(static["nonfinite"]):
            self.steps_since_nonfinite = int(static["replays"] - static["bad_at"])
            try:
                self.check_finite(static["bad_terms"])
            finally:
                self.steps_since_nonfinite = 0

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
        self._weights_changed()
        # the scaler lowers its scale exactly when it skipped the optimizer's step
        self.updated = scale is None or self.scaler.get_scale() >= scale
        return terms

    def _capture(self, lr, hr, sources, negatives, key) -> None:
        """Records one whole step into a new graph; the batch and negatives given are its
        first replay's inputs."""
        self._replay = None  # the old graph's memory pool goes back to the allocator
        device = lr.device
        static = {"lr": static_copy(lr), "hr": static_copy(hr),
                  "group_lr": [torch.zeros((), dtype=torch.float32, device=device)
                               for _ in self.optimizer.param_groups],
                  "nonfinite": torch.zeros((), dtype=torch.float32, device=device),
                  # replays so far, and the count at the first non-finite one
                  "replays": torch.zeros((), dtype=torch.int64, device=device),
                  "bad_at": torch.zeros((), dtype=torch.int64, device=device)}
        if sources is not None:
            static["sources"] = sources.to(device)
        if negatives is not None:
            static["negatives"] = static_copy(negatives)
        self.optimizer.zero_grad(set_to_none=True)

        def step() -> dict:
            terms = self._forward_loss(static["lr"], static["hr"], static.get("sources"),
                                       negatives=static.get("negatives"))
            # from the first non-finite loss on, every update is skipped on the device
            found = (~torch.isfinite(terms["total"].detach())).float()
            skip = torch.maximum(static["nonfinite"], found)
            first = skip > static["nonfinite"]
            static["replays"].add_(1)
            static["bad_at"].copy_(torch.where(first, static["replays"], static["bad_at"]))
            for name, value in terms.items():
                held = static["bad_terms"][name]
                held.copy_(torch.where(first, value.detach(), held))
            static["nonfinite"].copy_(skip)
            terms["total"].backward()  # no loss scaling in graphs (graph_supported)
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            with _device_lr(self.optimizer, static["group_lr"]), _skip_if(self.optimizer, skip):
                self.optimizer.step()
            return terms

        # the first bad step's terms are held in buffers made before the capture, shaped
        # as the last warm-up step's terms
        static["bad_terms"] = {k: torch.zeros_like(v) for k, v in self._terms_like.items()}
        self._static = static
        self._replay, static["terms"] = self.graphs.record(step)
        self._graph_key = key

    def _weights_changed(self) -> None:
        for changed in self._changed:
            changed()


@contextlib.contextmanager
def _device_lr(optimizer: torch.optim.Optimizer, values: list[torch.Tensor]) -> Iterator[None]:
    """The param groups' learning rates read from device tensors inside the block (what
    a captured step records), plain numbers again after it."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group, value in zip(optimizer.param_groups, values):
        group["lr"] = value
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, saved):
            group["lr"] = value


@contextlib.contextmanager
def _skip_if(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> Iterator[None]:
    """optimizer.step() inside the block skips its update where found_inf is nonzero, on
    the device (fused Adam's path for GradScaler)."""
    optimizer.found_inf = found_inf
    try:
        yield
    finally:
        del optimizer.found_inf


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """An optimizer (and its loaded state) ready for graph capture, or back to eager:
    capturable Adam keeps its step counts on the parameters' device and, to skip
    updates on the device, runs its fused implementation; back to eager, it runs the
    implementation it was built with (torch's default for a state loaded from a graph
    run's checkpoint)."""
    eager_impl = getattr(optimizer, "_eager_impl", None)
    for index, group in enumerate(optimizer.param_groups):
        if "fused" in group:
            if capturable:
                if eager_impl is None:
                    eager_impl = optimizer._eager_impl = {}
                eager_impl.setdefault(index, (group["fused"], group["foreach"]))
                group["fused"], group["foreach"] = True, False
            elif eager_impl is not None and index in eager_impl:
                group["fused"], group["foreach"] = eager_impl[index]
            elif group.get("capturable") and (group["fused"], group["foreach"]) == (True, False):
                group["fused"], group["foreach"] = None, None
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
