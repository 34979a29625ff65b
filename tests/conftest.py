import pytest
import torch

import csd_fast

CUDA_READY = torch.cuda.is_available() and csd_fast.build_info()["cuda"]


def pytest_report_header(config):
    return f"csd_fast build: {csd_fast.build_info()}; cuda device: {torch.cuda.is_available()}"


def device_params():
    """cpu always; cuda where a GPU and the CUDA kernels both exist (skipped otherwise)."""
    cuda = pytest.param(
        "cuda",
        marks=[pytest.mark.cuda,
               pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and CUDA kernels")],
    )
    return ["cpu", cuda]


@pytest.fixture(params=device_params())
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
