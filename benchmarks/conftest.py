"""Shared pieces of the benchmark suite: devices, synchronised timing, and pairing.

Every benchmark times a fused implementation and the plain-PyTorch reference on the
same inputs in one run (same pytest-benchmark group), after asserting they agree."""
import pytest
import torch

import csd_fast
from csd_fast._memory import cpu_peak_bytes

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]


def device_params():
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason="no CUDA GPU/kernels"))
    return ["cpu", cuda]


@pytest.fixture(params=device_params())
def device(request):
    return torch.device(request.param)


def synchronized(fn, device):
    """fn followed by a device sync, so wall time covers the GPU work it queued."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def cpu_peak_mb(fn) -> float:
    """Peak CPU tensor memory fn allocates beyond what exists when it starts, in MiB."""
    return cpu_peak_bytes(fn) / 2**20


def run_benchmark(benchmark, fn, device, rounds=5, warmup=1, measure_memory=False):
    """Time fn; with measure_memory, also record its peak memory (one extra, untimed
    run on the CPU, where it goes through the profiler)."""
    fn = synchronized(fn, device)
    for _ in range(warmup):
        fn()
    if measure_memory and device.type == "cpu" and not benchmark.disabled:
        benchmark.extra_info["peak_mem_mb"] = cpu_peak_mb(fn)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    benchmark.extra_info["torch"] = torch.__version__
    if device.type == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name(device)
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    if device.type == "cuda":
        benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result
