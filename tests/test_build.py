"""The compiled extension is present and says what it holds."""
import os
import warnings

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


class FakeExtension:
    """Stands in for csd_fast._C: what a build for another machine reports."""

    def __init__(self, cpu_capability="DEFAULT", torch_version=torch.__version__):
        self.cpu_capability, self.torch_version = cpu_capability, torch_version


LOAD_PROBLEMS = {
    "not_built": (None, ImportError("No module named 'csd_fast._C'"), "could not be loaded"),
    "broken_build": (None, ImportError("_C.abi3.so: undefined symbol: _ZN3c10"), "undefined symbol"),
    "other_cpu": (FakeExtension(cpu_capability="AVX512"), None, "compiled for AVX512"),
    "other_torch": (FakeExtension(torch_version="1.0.0"), None, "against torch 1.0.0"),
}


@pytest.mark.parametrize("problem", sorted(LOAD_PROBLEMS))
def test_kernels_that_cannot_run_fall_back_to_reference_with_one_warning(problem, monkeypatch,
                                                                          tmp_path):
    from csd_fast import _extension

    module, error, says = LOAD_PROBLEMS[problem]
    if problem == "other_cpu":
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    reason = _extension.load_problem(module, error, str(tmp_path))
    assert reason is not None and says in reason, reason
    monkeypatch.setattr(_extension, "_PROBLEM", reason)
    monkeypatch.setattr(_extension, "_warned", False)

    with pytest.warns(RuntimeWarning, match="backend='reference'") as record:
        model = csd_fast.EDSRCSD(n_resblocks=1, n_feats=8, scale=2)
    assert model.backend == "reference"
    assert says in str(record[0].message)
    with warnings.catch_warnings():  # once per process, not once per model
        warnings.simplefilter("error")
        saved = tmp_path / "m.safetensors"
        csd_fast.save_checkpoint(model, saved)
        assert csd_fast.load_checkpoint(saved).backend == "reference"
        assert csd_fast.load_checkpoint(saved, backend="reference").backend == "reference"
        from csd_fast.losses import ContrastiveLoss
        assert ContrastiveLoss(None).backend == "reference"
    x = torch.rand(1, 3, 6, 5) * 255
    assert model(x).shape == (1, 3, 12, 10)
    # asking for the kernels by name is an error that says why they cannot run
    with pytest.raises(RuntimeError, match=says):
        model.backend = "fused"


def test_usable_kernels_are_the_default():
    from csd_fast import _extension

    assert _extension.load_problem(FakeExtension(), None, "/nonexistent") is None
    assert csd_fast.EDSRCSD(n_resblocks=1, n_feats=8).backend == "fused"
