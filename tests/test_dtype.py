"""--dtype auto's decision (csd_fast/_dtype.py), with torch's CPU detection and the timing
replaced, so that every branch runs on any machine."""
import pytest
import torch

from csd_fast import _dtype
from csd_fast._dtype import resolve_dtype


@pytest.fixture(autouse=True)
def fresh_choice():
    _dtype._forget_cpu_choice()
    yield
    _dtype._forget_cpu_choice()


def fake_cpu(monkeypatch, native: bool, times: tuple[float, float]):
    calls = []
    monkeypatch.setattr(_dtype, "cpu_has_native_bf16", lambda: native)

    def timing():
        calls.append(1)
        return times

    monkeypatch.setattr(_dtype, "time_cpu_convs", timing)
    return calls


def test_named_dtypes_are_what_they_say():
    for device in ("cpu", "meta"):
        assert resolve_dtype("float32", device) is None
        assert resolve_dtype("bfloat16", device) is torch.bfloat16
        assert resolve_dtype("float16", device) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", "cpu")


def test_auto_picks_bf16_on_a_cpu_that_has_it_and_measures_it_faster(monkeypatch):
    calls = fake_cpu(monkeypatch, native=True, times=(1.0, 0.5))
    assert resolve_dtype("auto", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16
    assert len(calls) == 1  # measured once per process


@pytest.mark.parametrize("times", [(1.0, 1.2), (1.0, 0.95)])
def test_auto_never_picks_bf16_where_it_measures_slower_or_no_clearly_faster(monkeypatch, times):
    fake_cpu(monkeypatch, native=True, times=times)
    assert resolve_dtype("auto", "cpu") is None


def test_auto_does_not_time_a_cpu_without_bf16_instructions(monkeypatch):
    calls = fake_cpu(monkeypatch, native=False, times=(1.0, 0.1))
    assert resolve_dtype("auto", "cpu") is None
    assert not calls


def test_auto_on_cuda_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_dtype("auto", "cuda:0") is None


def test_auto_elsewhere_is_float32():
    assert resolve_dtype("auto", "meta") is None


def test_detection_and_timing_run_for_real():
    assert isinstance(_dtype.cpu_has_native_bf16(), bool)
    fp32, bf16 = _dtype.time_cpu_convs(channels=4, size=8, repeats=1)
    assert fp32 > 0 and bf16 > 0


def test_cli_defaults(monkeypatch):
    from csd_fast.cli import build_parser

    parser = build_parser()
    upscale = parser.parse_args(["upscale", "a.png", "-o", "out", "--checkpoint", "c.pt"])
    assert upscale.dtype == "auto"
    evaluate = parser.parse_args(["eval", "--data", "x"])
    assert evaluate.dtype == "float32"
    assert parser.parse_args(["eval", "--data", "x", "--dtype", "auto"]).dtype == "auto"
