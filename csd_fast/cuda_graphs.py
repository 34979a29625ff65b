"""Inference replayed from captured CUDA graphs.

A narrow student launches some hundred small kernels per image; on a GPU each launch
costs the CPU about as long as the kernel runs, so eager inference waits on Python. A
CUDA graph replays the whole forward in one launch. `GraphCache` keeps one captured
graph per input signature (shape, strides, dtype, device, and whatever else the caller
puts in the key: width, autocast dtype, the weights' storage), with static input and
output buffers:
- a signature is captured the second time it is seen, so one-off shapes (an evaluation
  over images of different sizes) never pay for a capture; tiles of one size share one
  graph;
- at most `capacity` graphs are kept, least recently used first out, all in one memory
  pool;
- each replay copies the input in and returns a copy of the output, so results never
  alias the graph's buffers.
Off the GPU, or where autograd records, the forward runs as it is.

The graph reads the weights where they live: in-place updates (load_state_dict, an
optimizer step) are seen by the next replay, while moving a model (`.to()`) changes the
weights' storage, which callers put in the key. The conv ops pack their weight slices
inside the graph (their pack cache stays out of a capture), so no pack goes stale.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
Replay = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CAPACITY = 8
SEEN_LIMIT = 256  # signatures remembered as seen once


class GraphCache:
    """forward(x) for CUDA inputs from captured graphs, keyed by x's signature and `key`."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 capture: Callable[[Forward, torch.Tensor, object], Replay] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._capture = capture or capture_cuda_graph
        self.device_types = {"cuda"}  # where inputs are graphed (tests stub capture on the CPU)
        self._graphs: OrderedDict[Hashable, Replay] = OrderedDict()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._pool = None
        self.captures = self.replays = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, forward: Forward, x: torch.Tensor, key: Hashable = ()) -> torch.Tensor:
        if x.device.type not in self.device_types or torch.is_grad_enabled():
            return forward(x)
        signature = (tuple(x.shape), x.stride(), x.dtype, x.device, key)
        replay = self._graphs.get(signature)
        if replay is None:
            if signature not in self._seen:
                self._remember(signature)
                return forward(x)
            if self._pool is None and x.is_cuda:
                self._pool = torch.cuda.graph_pool_handle()
            replay = self._capture(forward, x, self._pool)
            self.captures += 1
            self._graphs[signature] = replay
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(signature)
        self.replays += 1
        return replay(x)

    def clear(self) -> None:
        self._graphs.clear()
        self._seen.clear()

    def _remember(self, signature: Hashable) -> None:
        self._seen[signature] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)


def capture_cuda_graph(forward: Forward, x: torch.Tensor, pool) -> Replay:
    """Captures forward on a static copy of x; the returned replay copies its input in
    and the output out."""
    static_input = x.clone()
    # one eager run on a side stream first, as CUDA graphs need: lazy initialisation
    # (cuDNN plans, library workspaces) must not happen inside the capture
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        forward(static_input)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads (a DataLoader's pinned-memory thread) may allocate
    # while this one captures
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        static_output = forward(static_input)

    def replay(batch: torch.Tensor) -> torch.Tensor:
        static_input.copy_(batch)
        graph.replay()
        return static_output.clone()

    return replay


def weights_key(module: torch.nn.Module) -> tuple:
    """Where the module's tensors live: changes when `.to()` or `.data =` moves them."""
    return tuple(t.data_ptr() for t in module.parameters()) + \
        tuple(t.data_ptr() for t in module.buffers())
