"""Peak CPU tensor memory of a call, for the tests and benchmarks that hold memory counts
(never times) to a bound: PyTorch keeps no CPU peak counter, so it comes from the
profiler's allocation events."""
from __future__ import annotations

from typing import Callable


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of CPU tensors live at once while fn runs, beyond those alive when it
    starts."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak
