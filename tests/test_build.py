"""The compiled extension is present and says what it holds."""
import os

import pytest
import torch

import csd_fast


def test_extension_compiled_against_running_torch():
    info = csd_fast.build_info()
    assert info["compiled"] and info["error"] is None, info["error"]
    assert info["torch_version"] == torch.__version__
    assert hasattr(torch.ops.csd_fast, "contrastive_distance")


@pytest.mark.skipif(os.environ.get("CSD_FAST_CUDA") != "1", reason="CSD_FAST_CUDA=1 not set")
def test_cuda_build_when_demanded():
    info = csd_fast.build_info()
    assert info["cuda"], "CSD_FAST_CUDA=1 but the extension holds no CUDA kernels"
    assert any(a.startswith("sm_90") for a in info["cuda_archs"]), info["cuda_archs"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_present_on_a_gpu_machine():
    assert csd_fast.build_info()["cuda"], "a GPU is present but csd_fast was built without CUDA"
