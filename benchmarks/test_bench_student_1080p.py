"""Group "video": exported slim students upscaling 480x270 to 1920x1080 (x4) on the CPU,
csd_fast fp32 and bf16 against ONNX Runtime fp32 and torch.compile (benchmarks/
student_1080p.py builds the rows; run it directly for one interleaved table). Under
--benchmark-disable (CI's untimed pass) the frames are 24x40 and the torch.compile row is
left out, so the file adds seconds, not minutes."""
import pytest
import torch

from conftest import run_benchmark
from student_1080p import IMPLS, STUDENTS, assert_agrees, runners, slim_student


@pytest.fixture(scope="module")
def student_runners():
    cache = {}

    def get(student, with_compile):
        key = (student, with_compile)
        if key not in cache:
            impls = IMPLS if with_compile else [i for i in IMPLS if not i.startswith("compile")]
            cache[key] = runners(slim_student(*STUDENTS[student][:2]), impls)
        return cache[key]

    return get


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("student", list(STUDENTS))
def test_student_1080p(benchmark, student_runners, student, impl):
    timed = not benchmark.disabled
    if impl.startswith("compile") and not timed:
        pytest.skip("torch.compile at this size takes minutes on 2 cores: timed runs only")
    fns = student_runners(student, timed)
    if impl not in fns:
        pytest.skip(f"{impl} unavailable (onnxruntime/onnx not installed)")
    h, w = (270, 480) if timed else (24, 40)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    benchmark.group = f"video cpu {STUDENTS[student][2]} x4 {w}x{h}->{4 * w}x{4 * h}"
    assert_agrees(impl, fns[impl](x), fns["_reference"](x))
    run_benchmark(benchmark, lambda: fns[impl](x), torch.device("cpu"), rounds=3)
