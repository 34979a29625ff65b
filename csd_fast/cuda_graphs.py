"""Inference replayed from captured CUDA graphs.

A narrow student launches some hundred small kernels per image; on a GPU each launch
costs the CPU about as long as the kernel runs, so eager inference waits on Python. A
CUDA graph replays the whole forward in one launch. `GraphCache` keeps one captured
graph per input signature (shape, dtype, device, memory format, and whatever else the
caller puts in the key: width, autocast dtype, the weights' storage), with static input
and output buffers:
- a signature is captured the second time it is seen, so one-off shapes (an evaluation
  over images of different sizes) never pay for a capture; tiles of one shape share one
  graph, whatever the size of the image they are cut from (strides are not in the
  signature: the input is copied into the graph's own buffer);
- graphs used inside a `working_set()` block (one `upscale` call: up to nine tile
  shapes, eighteen with the self-ensemble's transposes) are never evicted while it is
  open, and the cache then keeps at least as many graphs as the largest working set, so
  a call repeated replays every graph instead of evicting them in a cycle; beyond that,
  least recently used first out; all graphs share one memory pool;
- each replay copies the input in and returns a copy of the output, so results never
  alias the graph's buffers (which also makes sharing the pool safe: no graph's output
  is read after another graph replays);
- the static input is an ordinary tensor, so a graph captured under inference mode
  replays under no_grad and the other way round.
Off the GPU, or where autograd records, the forward runs as it is. `clear()` drops the
graphs and their pool (the trainer does after each validation).

The graph reads the weights where they live: in-place updates (load_state_dict, an
optimizer step) are seen by the next replay, while moving or converting a model (`.to()`)
changes the weights' storage, dtype or shape, which callers put in the key
(`weights_key`). The conv ops pack their weight slices inside the graph (their pack
cache stays out of a capture), so no pack goes stale.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
Replay = Callable[[torch.Tensor], torch.Tensor]
# record(run) -> (replay, output): records run() once, replay() repeats it in place
Record = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]

DEFAULT_CAPACITY = 8
SEEN_LIMIT = 256  # signatures remembered as seen once


class GraphCache:
    """forward(x) for inputs on `device_types` from captured graphs, keyed by x's
    signature and `key`. capture(forward, x, pool) -> replay (tests pass a CPU stand-in)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 capture: Callable[[Forward, torch.Tensor, object], Replay] | None = None,
                 device_types: Iterable[str] = ("cuda",)):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._capture = capture or capture_cuda_graph
        self.device_types = set(device_types)
        self._graphs: OrderedDict[Hashable, Replay] = OrderedDict()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._pinned: set[Hashable] | None = None  # the open working set's signatures
        self._pool = None
        self.captures = self.replays = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, forward: Forward, x: torch.Tensor, key: Hashable = ()) -> torch.Tensor:
        if x.device.type not in self.device_types or torch.is_grad_enabled():
            return forward(x)
        signature = (tuple(x.shape), x.dtype, x.device, memory_format(x), key)
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
        else:
            self._graphs.move_to_end(signature)
        if self._pinned is not None:
            self._pinned.add(signature)
        self._evict()
        self.replays += 1
        return replay(x)

    @contextlib.contextmanager
    def working_set(self) -> Iterator[None]:
        """Graphs used inside stay until the outermost block closes, and the cache grows
        to hold them all afterwards."""
        if self._pinned is not None:  # nested: the outer block decides
            yield
            return
        self._pinned = set()
        try:
            yield
        finally:
            self.capacity = max(self.capacity, len(self._pinned))
            self._pinned = None
            self._evict()

    def clear(self) -> None:
        """Drops every graph, what was seen and the memory pool."""
        self._graphs.clear()
        self._seen.clear()
        self._pool = None

    def _evict(self) -> None:
        pinned = self._pinned or set()
        for signature in [s for s in self._graphs if s not in pinned]:  # oldest first
            if len(self._graphs) <= self.capacity:
                break
            del self._graphs[signature]

    def _remember(self, signature: Hashable) -> None:
        self._seen[signature] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of the graph's buffer for x: channels-last where x's channels are
    innermost (a channels-last image or a tile cut from one), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and (
            x.is_contiguous(memory_format=torch.channels_last) or (x.size(1) > 1 and x.stride(1) == 1)):
        return torch.channels_last
    return torch.contiguous_format


def static_copy(x: torch.Tensor) -> torch.Tensor:
    """A graph's input buffer holding x: dense in x's memory format, and an ordinary
    tensor even under inference mode, so that copy_ into it works in any grad mode."""
    with torch.inference_mode(False), torch.no_grad():
        buffer = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))
        return buffer.copy_(x)


def replay_of(forward: Forward, x: torch.Tensor, record: Record) -> Replay:
    """forward recorded on a static copy of x; the replay copies its input in and the
    output out."""
    static_input = static_copy(x)
    run, static_output = record(lambda: forward(static_input))

    def replay(batch: torch.Tensor) -> torch.Tensor:
        static_input.copy_(batch)
        run()
        return static_output.clone()

    return replay


def capture_cuda_graph(forward: Forward, x: torch.Tensor, pool) -> Replay:
    """forward captured in a CUDA graph in `pool` (replay_of's contract)."""
    def record(run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        # one eager run on a side stream first, as CUDA graphs need: lazy initialisation
        # (cuDNN plans, library workspaces) must not happen inside the capture
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a DataLoader's pinned-memory thread) may allocate
        # while this one captures
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            output = run()
        return graph.replay, output

    return replay_of(forward, x, record)


def weights_key(module: torch.nn.Module) -> tuple:
    """Where the module's tensors live, and as what: changes when `.to()` or `.data =`
    moves or converts them (an address handed back by the allocator to a tensor of
    another dtype or shape is a new key)."""
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape))
                 for tensors in (module.parameters(), module.buffers()) for t in tensors)
