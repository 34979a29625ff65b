"""Which cuDNN engine takes each graph the CUDA conv ops build, asked without a GPU.

cuDNN can plan for a device it is only told about (its properties as JSON), so a CPU
machine learns which engine an H200 or an A100 would run: a precompiled one, or one that
cuDNN compiles with NVRTC on first use, and how much workspace it needs. `model_graphs`
lists the graphs EDSRCSD's fused forward (and, for training, its residual blocks'
backward) builds for an input shape, with the tensors' exact geometry; `plan` asks cuDNN
through the extension's own graph builder (torch.ops.csd_fast.cudnn_engine), so the
answer is about the very graph the op would run. tests/test_cudnn_engines.py holds
every forward graph to a precompiled engine and a small workspace; docs/kernels.md
tabulates the answers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .. import _extension

__all__ = ["DEVICES", "ConvGraph", "EngineChoice", "available", "model_graphs", "plan"]

# cudnn_frontend DeviceProperties of the GPUs the kernels are compiled for (sm_90, sm_80);
# what cuDNN's heuristics read: SM count and version, shared memory, L2, clocks.
DEVICES = {
    "H200": dict(
        deviceName="NVIDIA H200", deviceVer=900, driverVer=13000, cudaDeviceId=0, pciDeviceId=8996,
        multiProcessorCount=132, smCountOrigin=0, warpSize=32, maxThreadsPerBlock=1024,
        maxThreadsPerSM=2048, maxCtasPerSM=32, regsPerBlock=65536, maxRegistersPerSM=65536,
        maxBlockSize=[1024, 1024, 64], maxGridSize=[2147483647, 65535, 65535],
        maxSharedMemoryPerBlock=49152, maxSharedMemoryPerBlockOptin=232448,
        reservedSharedMemoryPerBlock=1024, l2CacheSize=52428800, totalGlobalMem=150754820096,
        smClockRateKHz=1980000, memClockRateKHz=3201000, isTccDriver=0, supportCoopLaunch=1),
    "A100": dict(
        deviceName="NVIDIA A100-SXM4-80GB", deviceVer=800, driverVer=13000, cudaDeviceId=0,
        pciDeviceId=8370, multiProcessorCount=108, smCountOrigin=0, warpSize=32,
        maxThreadsPerBlock=1024, maxThreadsPerSM=2048, maxCtasPerSM=32, regsPerBlock=65536,
        maxRegistersPerSM=65536, maxBlockSize=[1024, 1024, 64],
        maxGridSize=[2147483647, 65535, 65535], maxSharedMemoryPerBlock=49152,
        maxSharedMemoryPerBlockOptin=166912, reservedSharedMemoryPerBlock=1024,
        l2CacheSize=41943040, totalGlobalMem=85097971712, smClockRateKHz=1410000,
        memClockRateKHz=1593000, isTccDriver=0, supportCoopLaunch=1),
}

EPILOGUES = {"bias": 0, "bias+relu": 1, "residual+bias": 2}


@dataclass(frozen=True)
class ConvGraph:
    """One cuDNN graph: a 3x3 conv of (n, c_in, h, w) to k_out channels, all tensors
    channels-last as the ops make them. kind "fprop" with an epilogue of EPILOGUES, or
    "dgrad" (the input gradient; epilogue "relu-backward" takes a ReLU's mask)."""
    name: str
    kind: str
    epilogue: str
    n: int
    c_in: int
    k_out: int
    h: int
    w: int

    def tensors(self, dtype: torch.dtype, device: str = "meta"):
        """(x, w, side, y) with the ops' geometry; for a dgrad x is dy and y is dx."""
        def nhwc(*shape):
            return torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)

        weight = nhwc(self.k_out, self.c_in, 3, 3)
        inp, out = nhwc(self.n, self.c_in, self.h, self.w), nhwc(self.n, self.k_out, self.h, self.w)
        if self.kind == "dgrad":
            return out, weight, (inp if self.epilogue == "relu-backward" else None), inp
        return inp, weight, (out if self.epilogue == "residual+bias" else None), out

    def query_args(self, dtype: torch.dtype):
        x, w, side, y = self.tensors(dtype)
        return self.kind, x, w, side, y, EPILOGUES.get(self.epilogue, 0)


@dataclass(frozen=True)
class EngineChoice:
    """What cuDNN picks (engine, whether compiled at run time, workspace bytes), or why
    it picks nothing (error), or why the op runs ATen's convolution without asking (aten:
    an odd channel count, 2^31 or more elements, or every engine over the workspace cap)."""
    engine: str
    runtime_compiled: bool
    workspace: int
    error: str
    aten: str = ""


def available() -> bool:
    """The extension was built with its CUDA kernels (the query needs cuDNN and the
    frontend headers, not a GPU)."""
    return _extension.available() and hasattr(torch.ops.csd_fast, "cudnn_engine")


def plan(device: str | dict, graph: ConvGraph, dtype: torch.dtype) -> EngineChoice:
    """The engine cuDNN picks for `graph` on `device` (a name of DEVICES, or properties)."""
    if not available():
        raise RuntimeError("the cuDNN engine query needs csd_fast built with its CUDA kernels")
    properties = DEVICES[device] if isinstance(device, str) else device
    result = torch.ops.csd_fast.cudnn_engine(json.dumps(properties), *graph.query_args(dtype))
    return EngineChoice(*result)


def graph_key(graph: ConvGraph, dtype: torch.dtype) -> str:
    """The op's plan-cache key of this graph (without the device)."""
    return torch.ops.csd_fast.cudnn_graph_key(*graph.query_args(dtype))


def model_graphs(n_feats: int, width: float, factors: list[int], batch: int, height: int,
                 width_px: int, training: bool = False) -> list[ConvGraph]:
    """The distinct graphs EDSRCSD's fused forward builds for an LR input (batch, 3,
    height, width_px) at this width (and, with training, its residual blocks' fused
    backward), in network order. Mirrors the CUDA ops: every input is the exact channel
    count (the model never slices a wider activation), the packed weight (out, in, 3, 3),
    the upsampler one conv to s*s*w channels."""
    w = int(n_feats * width)
    n, h, x = batch, height, width_px
    graphs = [
        ConvGraph("head", "fprop", "bias", n, 3, w, h, x),
        ConvGraph("block conv1", "fprop", "bias+relu", n, w, w, h, x),
        ConvGraph("block conv2", "fprop", "residual+bias", n, w, w, h, x),
        # the body conv's residual is the head's output: the same graph as conv2
    ]
    for s in factors:
        graphs.append(ConvGraph(f"upsampler x{s}", "fprop", "bias", n, w, s * s * w, h, x))
        h, x = h * s, x * s
    graphs.append(ConvGraph("tail", "fprop", "bias", n, w, 3, h, x))
    if training:
        h, x = height, width_px
        graphs += [ConvGraph("block conv2 dgrad", "dgrad", "relu-backward", n, w, w, h, x),
                   ConvGraph("block conv1 dgrad", "dgrad", "none", n, w, w, h, x)]
    return graphs
