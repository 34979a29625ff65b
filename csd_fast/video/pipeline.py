"""Frames through the network as a pipeline: the source is read in one thread, batches run
through the network in another, and the caller consumes results in its own, each stage
ahead of the next by a bounded queue, so decoding, the network and encoding overlap
(FFmpeg and torch release the GIL) and memory stays bounded however long the stream."""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..upscale import quantize, upscale_rgb

_DONE = object()


@dataclass
class Item:
    """A frame (HxWx3 uint8 RGB) with what the consumer needs to place it (e.g. its
    timestamp); or, with frame None, something passed through in order (an audio packet)."""
    frame: np.ndarray | None
    meta: Any = None


class _Failed:
    def __init__(self, err: BaseException):
        self.err = err


def upscale_frames(model, frames: Iterable, width: float | None = None, *, device=None,
                   batch: int = 4, **options) -> Iterator[np.ndarray]:
    """Each frame of `frames` (HxWx3 uint8 RGB arrays or tensors) upscaled, as HxWx3 uint8
    arrays in order, exactly as `csd-fast upscale` upscales an 8-bit RGB PNG. Runs `batch`
    frames per forward while the next frames are read ahead. width: the model's default_width
    or 1; device: the model's; options: those of csd_fast.inference.upscale (tile, ...)."""
    items = (Item(_rgb8(f)) for f in frames)
    with contextlib.closing(upscale_items(model, items, width, device=device, batch=batch,
                                          **options)) as upscaled:
        for item in upscaled:
            yield item.frame


def _rgb8(frame) -> np.ndarray:
    array = np.asarray(frame.cpu() if isinstance(frame, torch.Tensor) else frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"upscale_frames takes HxWx3 uint8 RGB frames, got {array.dtype} {array.shape}")
    return array


def upscale_items(model, items: Iterable[Item], width: float | None = None, *, device=None,
                  batch: int = 4, **options) -> Iterator[Item]:
    """upscale_frames over Items: each frame upscaled, meta kept, pass-through items on
    their way as soon as they come (ahead of frames still in the network)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if width is None:
        width = getattr(model, "default_width", None) or 1.0
    if device is None:
        device = next(model.parameters()).device
    stop = threading.Event()
    read_q: queue.Queue = queue.Queue(maxsize=2 * batch)
    done_q: queue.Queue = queue.Queue(maxsize=2 * batch)

    def network(frames: list[Item]) -> list[Item]:
        rgb = torch.from_numpy(np.stack([f.frame for f in frames])).permute(0, 3, 1, 2).double() / 255
        sr = quantize(upscale_rgb(model, rgb, width, device, **options), 255).to(torch.uint8)
        out = sr.permute(0, 2, 3, 1).numpy()
        return [Item(np.ascontiguousarray(o), f.meta) for o, f in zip(out, frames)]

    def run_network() -> None:
        # a new thread starts on CUDA device 0: make the model's its current one (streams, graphs)
        with torch.cuda.device(device) if torch.device(device).type == "cuda" else contextlib.nullcontext():
            batches()

    def batches() -> None:
        pending: list[Item] = []
        while True:
            item = _get(read_q, stop)
            if stop.is_set():
                return
            if item is _DONE or isinstance(item, _Failed):
                for out in network(pending) if pending and item is _DONE else []:
                    _put(done_q, out, stop)
                _put(done_q, item, stop)
                return
            if item.frame is None:
                _put(done_q, item, stop)
                continue
            if pending and pending[0].frame.shape != item.frame.shape:  # a batch is one size
                for out in network(pending):
                    _put(done_q, out, stop)
                pending = []
            pending.append(item)
            if len(pending) == batch:
                for out in network(pending):
                    _put(done_q, out, stop)
                pending = []

    threads = [threading.Thread(target=_stage, args=(lambda: _feed(items, read_q, stop), read_q, stop),
                                name="csd_fast-read", daemon=True),
               threading.Thread(target=_stage, args=(run_network, done_q, stop),
                                name="csd_fast-network", daemon=True)]
    for t in threads:
        t.start()
    try:
        while True:
            item = done_q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.err
            yield item
    finally:  # the caller stopped early, failed, or was interrupted: let the stages end
        stop.set()
        for t in threads:
            t.join(timeout=10)


def _feed(items: Iterable[Item], read_q: queue.Queue, stop: threading.Event) -> None:
    for item in items:
        if not _put(read_q, item, stop):
            return
    _put(read_q, _DONE, stop)


def _stage(body, out_q: queue.Queue, stop: threading.Event) -> None:
    """Run a stage; its exception goes down the pipeline in order, raised by the consumer."""
    try:
        body()
    except BaseException as err:  # noqa: BLE001 -- re-raised in the consumer's thread
        _put(out_q, _Failed(err), stop)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put, waiting for room unless the pipeline is stopping; False when it is."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
    return _DONE
