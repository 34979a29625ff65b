"""Shipping the student (csd_fast.export, docs/export.md).

The slim network must compute exactly what EDSRCSD computes at its width; each file
format must load back through load_checkpoint and into its own project's EDSR. The
EDSR-PyTorch and BasicSR networks are written out below as small mirror modules of
their published structure (and BasicSR's own class is used too where it imports), so a
wrong key, a missing mean shift or a wrong constructor argument shows up as a failed
strict load or a different output.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from csd_fast import _extension
from csd_fast.archs import EDSRCSD
from csd_fast.archs.edsr_csd import upsample_factors
from csd_fast.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from csd_fast.export import (
    FORMATS,
    FixedWidth,
    export_checkpoint,
    export_student,
    layout_state_dict,
    write_student,
)

F64 = torch.float64
CONFIGS = {
    # EDSR-baseline-like: res_scale 1, images and network both on [0, 255]
    "baseline": dict(n_resblocks=2, n_feats=32, res_scale=1.0),
    # EDSR-like res_scale, BasicSR-like ranges ([0, 1] images, 255 inside), own mean
    "scaled": dict(n_resblocks=2, n_feats=32, res_scale=0.1, rgb_range=1.0, img_range=255.0,
                   rgb_mean=(0.5, 0.42, 0.37)),
}
WIDTHS = [0.25, 0.3, 0.5, 1.0]


def make_model(scale: int, dtype=F64, **config) -> EDSRCSD:
    model = EDSRCSD(scale=scale, backend="reference", **config).to(dtype)
    with torch.no_grad():  # biases well away from zero, so a dropped or shifted bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.rand_like(p) * 0.2 - 0.1)
    return model.eval()


def image(model: EDSRCSD, *shape: int, dtype=F64) -> torch.Tensor:
    return torch.rand(shape, dtype=dtype) * model.rgb_range


def close(a: torch.Tensor, b: torch.Tensor, model: EDSRCSD, rel: float = 1e-10) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= rel * model.rgb_range, f"max abs difference {err}"


def source_checkpoint(tmp_path: Path, model: EDSRCSD, width: float | None = None) -> Path:
    path = tmp_path / "source.safetensors"
    save_checkpoint(model, path, default_width=width)
    return path


# --- the slim network --------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_slim_network_equals_the_width_slice(scale, width, config):
    model = make_model(scale, **CONFIGS[config])
    slim = export_student(model, width, backend="reference")
    assert slim.n_feats == int(32 * width) == model.channels(width)
    assert {k: v for k, v in slim.config().items() if k != "n_feats"} == \
        {k: v for k, v in model.config().items() if k != "n_feats"}
    x = image(model, 2, 3, 7, 6)
    with torch.no_grad():
        out = slim(x)
        close(out, model(x, width), model)
        if width < 1:  # the comparison can fail: other widths give other images
            assert (out - model(x, 1.0)).abs().max() > 1e-3 * model.rgb_range
    assert slim.num_parameters() == model.num_parameters(width) == sum(p.numel() for p in slim.parameters())


def test_channel_count_is_the_models_own_even_where_float_rounding_bites():
    model = make_model(2, n_resblocks=1, n_feats=100)
    slim = export_student(model, 0.29)  # 100 * 0.29 = 28.999999999999996
    assert slim.n_feats == model.channels(0.29) == 28
    x = image(model, 1, 3, 5, 4)
    with torch.no_grad():
        close(slim(x), model(x, 0.29), model)


def test_slim_weights_are_copies_of_their_own():
    model = make_model(2, **CONFIGS["baseline"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slim = export_student(model, 0.5)
    for p in slim.parameters():  # no view into the full-width storage
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    with torch.no_grad():
        for p in slim.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert slim.default_width == 1.0 and slim.slim_of == (0.5, 32)
    assert slim.head.weight.dtype == F64 and slim.shift.dtype == model.shift.dtype


def test_default_width_comes_from_the_model():
    model = make_model(2, **CONFIGS["baseline"])
    model.default_width = 0.25
    assert export_student(model).n_feats == 8
    model.default_width = None
    assert export_student(model).n_feats == 32


# --- EDSR-PyTorch and BasicSR, as their projects define them --------------------------------

def conv3(n_in: int, n_out: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1)


def shuffle_stages(n_feats: int, scale: int) -> list[nn.Module]:
    """conv to s*s*F channels then pixel shuffle, per stage, as both projects' upsamplers."""
    stages: list[nn.Module] = []
    for s in upsample_factors(scale):
        stages += [conv3(n_feats, s * s * n_feats), nn.PixelShuffle(s)]
    return stages


class MeanShiftMirror(nn.Conv2d):
    """EDSR-PyTorch's MeanShift: a 1x1 conv adding sign * rgb_range * mean (std 1)."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, 1)
        mean = torch.tensor([0.4488, 0.4371, 0.4040])
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * mean)


class EdsrPytorchBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(conv3(n_feats, n_feats), nn.ReLU(), conv3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EdsrPytorchMirror(nn.Module):
    """EDSR-PyTorch's model/edsr.py structure: sub_mean, head, body (+ its last conv),
    long skip, tail = (upsampler, conv), add_mean. Images in [0, rgb_range]."""

    def __init__(self, scale, n_resblocks, n_feats, res_scale, rgb_range, n_colors=3):
        super().__init__()
        self.sub_mean = MeanShiftMirror(rgb_range, -1)
        self.add_mean = MeanShiftMirror(rgb_range, +1)
        self.head = nn.Sequential(conv3(n_colors, n_feats))
        blocks = [EdsrPytorchBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, conv3(n_feats, n_feats))
        self.tail = nn.Sequential(nn.Sequential(*shuffle_stages(n_feats, scale)), conv3(n_feats, n_colors))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


class BasicsrBlock(nn.Module):
    def __init__(self, num_feat: int, res_scale: float):
        super().__init__()
        self.conv1, self.conv2 = conv3(num_feat, num_feat), conv3(num_feat, num_feat)
        self.relu = nn.ReLU()
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class BasicsrMirror(nn.Module):
    """BasicSR's archs/edsr_arch.py structure: (x - mean) * img_range, conv_first, body,
    conv_after_body + skip, upsample, conv_last, / img_range + mean. Images in [0, 1]."""

    def __init__(self, num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range,
                 rgb_mean):
        super().__init__()
        self.img_range = img_range
        # an attribute, not in the state dict; float64 here, so the float64 test is exact
        self.mean = torch.tensor(rgb_mean, dtype=F64).view(1, 3, 1, 1)
        self.conv_first = conv3(num_in_ch, num_feat)
        self.body = nn.Sequential(*(BasicsrBlock(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = conv3(num_feat, num_feat)
        self.upsample = nn.Sequential(*shuffle_stages(num_feat, upscale))
        self.conv_last = conv3(num_feat, num_out_ch)

    def forward(self, x):
        mean = self.mean.to(x.dtype)
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.body(x)) + x
        return self.conv_last(self.upsample(x)) / self.img_range + mean


def load_file(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def export_to(tmp_path: Path, model: EDSRCSD, width: float, fmt: str) -> dict:
    slim = export_student(model, width, backend="reference")
    return write_student(slim, fmt, tmp_path / f"student{FORMATS[fmt]}", source="in-memory")


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_file_loads_into_its_network(tmp_path, scale, config):
    model = make_model(scale, **CONFIGS[config])
    info = export_to(tmp_path, model, 0.3, "edsr_pytorch")
    net = EdsrPytorchMirror(**info["load_with"]).to(F64)
    net.load_state_dict(load_file(info["path"]), strict=True)
    x = image(model, 2, 3, 6, 7)
    # EDSR-PyTorch's images span [0, rgb_range] with rgb_range = our img_range
    k = model.img_range / model.rgb_range
    with torch.no_grad():
        close(net(x * k) / k, model(x, 0.3), model)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_basicsr_file_loads_into_its_network(tmp_path, scale, config):
    model = make_model(scale, **CONFIGS[config])
    info = export_to(tmp_path, model, 0.3, "basicsr")
    contents = load_file(info["path"])
    assert list(contents) == ["params"]
    net = BasicsrMirror(**info["load_with"]).to(F64)
    net.load_state_dict(contents["params"], strict=True)
    x = image(model, 2, 3, 6, 7)
    with torch.no_grad():  # BasicSR's images span [0, 1]
        close(net(x / model.rgb_range) * model.rgb_range, model(x, 0.3), model)


def basicsr_edsr_class():
    """BasicSR's own EDSR, or a skip. basicsr 1.4.2 (the last release) imports
    torchvision.transforms.functional_tensor, which torchvision 0.17 removed; the module
    it wants is torchvision.transforms.functional, so that name is lent for the import."""
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("basicsr is not installed (the mirror-module test covers its layout)")
    try:
        import torchvision.transforms.functional as functional
        with pytest.MonkeyPatch.context() as mp:
            if importlib.util.find_spec("torchvision.transforms.functional_tensor") is None:
                mp.setitem(sys.modules, "torchvision.transforms.functional_tensor", functional)
            from basicsr.archs.edsr_arch import EDSR
    except Exception as err:  # an old package against a new torch can fail in many ways
        pytest.skip(f"basicsr does not import here: {type(err).__name__}: {err}")
    return EDSR


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # basicsr's own imports
@pytest.mark.parametrize("scale", [3, 4])
def test_basicsr_file_loads_into_basicsr_itself(tmp_path, scale):
    EDSR = basicsr_edsr_class()
    model = make_model(scale, **CONFIGS["scaled"])
    info = export_to(tmp_path, model, 0.3, "basicsr")
    net = EDSR(**info["load_with"]).to(F64).eval()
    net.load_state_dict(load_file(info["path"])["params"], strict=True)
    x = image(model, 1, 3, 6, 7)
    with torch.no_grad():  # BasicSR holds its mean in float32
        close(net(x / model.rgb_range) * model.rgb_range, model(x, 0.3), model, rel=1e-7)


def test_layout_key_names():
    slim = export_student(make_model(4, **CONFIGS["baseline"]), 0.5)
    ep = layout_state_dict(slim, "edsr_pytorch")
    assert list(ep)[:4] == ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"]
    assert {"head.0.weight", "body.1.body.2.bias", "body.2.weight", "tail.0.0.weight", "tail.0.2.weight",
            "tail.1.weight"} <= set(ep)
    assert ep["tail.0.2.weight"].shape == (64, 16, 3, 3) and ep["tail.1.weight"].shape == (3, 16, 3, 3)
    bs = layout_state_dict(slim, "basicsr")
    assert {"conv_first.weight", "body.0.conv1.weight", "body.1.conv2.bias", "conv_after_body.weight",
            "upsample.0.weight", "upsample.2.weight", "conv_last.bias"} == {k for k in bs if k.endswith(
                ("conv_first.weight", "body.0.conv1.weight", "body.1.conv2.bias", "conv_after_body.weight",
                 "upsample.0.weight", "upsample.2.weight", "conv_last.bias"))}
    assert len(bs) == len(ep) - 4 == len(slim.state_dict())
    with pytest.raises(ValueError, match="unknown layout 'caffe'; choose one of"):
        layout_state_dict(slim, "caffe")


# --- files, round trips through load_checkpoint --------------------------------------------

ROUND_TRIPS = {  # source n_feats, width, scale, config: slim n_feats 16, 19 and 77
    "f16": (64, 0.25, 2, dict(n_resblocks=2, res_scale=1.0)),
    "f19": (64, 0.3, 3, dict(n_resblocks=2, res_scale=0.1, rgb_range=1.0, img_range=255.0)),
    "f77": (77, 1.0, 4, dict(n_resblocks=1, res_scale=1.0)),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("fmt", ["csd_fast", "edsr_pytorch", "basicsr"])
def test_round_trip_through_load_checkpoint(tmp_path, fmt, case):
    n_feats, width, scale, config = ROUND_TRIPS[case]
    model = make_model(scale, n_feats=n_feats, **config)
    src = source_checkpoint(tmp_path, model, width)  # width=None below takes it from here
    out = tmp_path / f"student{FORMATS[fmt]}"
    info = export_checkpoint(src, None, fmt, out)
    assert info["path"] == str(out) and info["format"] == fmt and info["width"] == width
    assert info["n_feats"] == int(n_feats * width) and info["source_n_feats"] == n_feats
    assert info["parameters"] == model.num_parameters(width)
    loaded = load_checkpoint(out, backend="reference", **info["load_overrides"])
    assert loaded.n_feats == int(n_feats * width)
    assert loaded.config() == {**model.config(), "n_feats": int(n_feats * width)}
    x = image(model, 1, 3, 6, 5)
    with torch.no_grad():
        close(loaded(x), model(x, width), model)
    if fmt == "csd_fast":
        assert loaded.default_width == 1.0 and info["load_overrides"] == {}
        meta = read_metadata(out)
        assert meta["export"] == "slim_student" and float(meta["export_width"]) == width
        assert meta["export_source_n_feats"] == str(n_feats) and meta["export_source"] == str(src)
    else:
        for tensor in load_file(out).get("params", load_file(out)).values():
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_what_load_checkpoint_needs_besides_the_file(tmp_path):
    """EDSR-PyTorch and BasicSR files do not store res_scale (nor BasicSR the ranges):
    load_overrides lists exactly what the loader would get wrong, and it does get it wrong."""
    model = make_model(2, n_resblocks=2, n_feats=32, res_scale=0.1)
    src = source_checkpoint(tmp_path, model)
    ep = export_checkpoint(src, 0.5, "edsr_pytorch", tmp_path / "s.pt")
    bs = export_checkpoint(src, 0.5, "basicsr", tmp_path / "s.pth")
    assert ep["load_overrides"] == {"res_scale": 0.1}
    assert bs["load_overrides"] == {"res_scale": 0.1, "rgb_range": 255.0}
    x = image(model, 1, 3, 5, 5)
    with torch.no_grad():
        guessed = load_checkpoint(tmp_path / "s.pt", backend="reference")
        assert guessed.res_scale == 1.0
        assert (guessed(x) - model(x, 0.5)).abs().max() > 1e-3
        in_unit_range = load_checkpoint(tmp_path / "s.pth", backend="reference", res_scale=0.1)
        close(in_unit_range(x / 255) * 255, model(x, 0.5), model)


def test_the_slim_file_records_whether_its_width_was_trained(tmp_path, capsys):
    from csd_fast.cli import main

    model = make_model(2, **CONFIGS["baseline"])
    source = tmp_path / "csd.safetensors"
    save_checkpoint(model, source, {"stage": "csd"}, default_width=0.5)  # as the trainer writes it
    info = export_checkpoint(source, None, "csd_fast", tmp_path / "s.safetensors")
    assert info["warnings"] == [] and load_checkpoint(tmp_path / "s.safetensors").trained_widths == (1.0,)
    assert main(["export", str(source), "--width", "0.25", "-o", str(tmp_path / "q.safetensors")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("csd-fast export: warning: width 0.25 was never trained") and err.count("\n") == 1
    assert load_checkpoint(tmp_path / "q.safetensors").trained_widths is None  # nothing to claim


def test_width_defaults_to_1_without_a_stored_width(tmp_path):
    model = make_model(2, **CONFIGS["baseline"])
    info = export_checkpoint(source_checkpoint(tmp_path, model), None, "csd_fast", tmp_path / "s.safetensors")
    assert info["width"] == 1.0 and info["n_feats"] == 32


# --- ONNX ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install csd_fast[export])")
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = make_model(3, torch.float32, **CONFIGS["scaled"])
    info = export_checkpoint(source_checkpoint(tmp, model, 0.5), None, "onnx", tmp / "student.onnx")
    return model, {**info, "source": str(tmp / "source.safetensors")}


def test_onnx_matches_pytorch_with_dynamic_batch_and_size(onnx_export):
    import onnxruntime

    model, info = onnx_export
    session = onnxruntime.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "lr" and out.name == "sr"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 3
    assert all(isinstance(d, str) for d in inp.shape[2:])
    for shape in [(1, 3, 12, 10), (3, 3, 7, 15)]:
        x = image(model, *shape, dtype=torch.float32)
        (sr,) = session.run(None, {"lr": x.numpy()})
        with torch.no_grad():
            expected = model(x, 0.5)
        assert sr.shape == (shape[0], 3, 3 * shape[2], 3 * shape[3])
        close(torch.from_numpy(sr), expected, model, rel=1e-5)


def test_onnx_file_says_what_it_is(onnx_export):
    import onnx

    _, info = onnx_export
    proto = onnx.load(info["path"])
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["scale"] == "3" and props["n_feats"] == "16" and float(props["export_width"]) == 0.5
    assert props["input_range"] == "1.0" and props["export"] == "slim_student"
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 18
    assert info["load_with"] == dict(input="lr", output="sr", opset=18, dtype="float32", input_range=1.0)


def small_set(folder: Path, count: int = 2) -> Path:
    """A folder of smooth random HR images, 27 x 33 (every scale's multiple: cropped to fit)."""
    from PIL import Image

    folder.mkdir()
    rng = torch.Generator().manual_seed(1)
    for i in range(count):
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 7, generator=rng), size=(27, 33),
                                                 mode="bicubic").clamp(0, 1)[0]
        Image.fromarray((smooth * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"im{i}.png")
    return folder


def eval_scores(tmp_path, checkpoint, data, *extra) -> tuple[dict, str]:
    """`csd-fast eval` of a checkpoint: (the set's model row, what it printed)."""
    import json

    from csd_fast.cli import main

    report = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu",
                 "--json", str(report), "--csv", "", "--overwrite", *extra]) == 0
    (row,) = json.loads(report.read_text())["results"].values()
    return row["model"], json.loads(report.read_text())["meta"]


@pytest.mark.parametrize("extra", [[], ["--tile", "5", "--self-ensemble"]])
def test_eval_scores_the_onnx_file_as_the_student(onnx_export, tmp_path, capsys, extra):
    """`csd-fast eval` runs the exported file in onnxruntime: the same PSNR/SSIM as the CSD
    network at the student's width (this model takes [0, 1] input: the range convention holds)."""
    model, info = onnx_export
    data = small_set(tmp_path / "set")
    onnx, meta = eval_scores(tmp_path, info["path"], data, *extra)
    assert meta["runtime"] == "onnxruntime" and meta["width"] == 1.0
    assert "ONNX, exported at width 0.5" in capsys.readouterr().out
    torch_row, meta = eval_scores(tmp_path, info["source"], data, *extra)
    assert meta["runtime"] == "pytorch" and meta["width"] == 0.5
    assert onnx["psnr"] == pytest.approx(torch_row["psnr"], abs=1e-3)
    assert onnx["ssim"] == pytest.approx(torch_row["ssim"], abs=1e-5)
    full, _ = eval_scores(tmp_path, info["source"], data, "--width", "1", *extra)
    assert abs(full["psnr"] - torch_row["psnr"]) > 0.01  # the widths are told apart


def test_eval_of_an_onnx_file_refuses_what_the_file_cannot_do(onnx_export, tmp_path, capsys):
    from csd_fast.cli import main

    _, info = onnx_export
    common = ["eval", "--checkpoint", info["path"], "--data", str(small_set(tmp_path / "set", 1)),
              "--json", "", "--csv", ""]
    assert main([*common, "--width", "0.5"]) == 2
    assert "is an ONNX file of one width (exported at 0.5)" in capsys.readouterr().err
    assert main([*common, "--dtype", "bfloat16"]) == 2
    assert "runs in the float32 it was exported in" in capsys.readouterr().err


def test_onnx_file_without_onnxruntime_says_so_in_words(tmp_path, capsys, monkeypatch):
    from csd_fast.cli import main

    fake = tmp_path / "student.onnx"  # what every ONNX file starts with: ir_version, producer
    fake.write_bytes(b"\x08\x0a\x12\x07pytorch\x1a\x052.9.0" + bytes(range(40)))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    data = small_set(tmp_path / "set", 1)
    assert main(["eval", "--checkpoint", str(fake), "--data", str(data), "--scale", "3",
                 "--json", "", "--csv", ""]) == 2
    err = capsys.readouterr().err
    assert err == f"csd-fast eval: error: {fake} is an ONNX file: install onnxruntime to evaluate it " \
                  "(`pip install onnxruntime`, or `pip install csd_fast[export]`)\n"
    # where a PyTorch checkpoint is wanted, the file is named for what it is, never shown as bytes
    with pytest.raises(ValueError, match="is an ONNX file: it runs in ONNX Runtime") as info:
        load_checkpoint(fake)
    assert "pytorch" not in str(info.value) and "\\x" not in str(info.value)


def test_onnx_without_its_packages_names_the_extra(tmp_path, monkeypatch):
    model = make_model(2, **CONFIGS["baseline"])
    src = source_checkpoint(tmp_path, model)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(ImportError, match=r"onnx and onnxscript .*`pip install csd_fast\[export\]`"):
        export_checkpoint(src, 0.5, "onnx", tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


# --- torch.export of the fused network ------------------------------------------------------

@pytest.mark.skipif(not _extension.usable(), reason="the compiled csd_fast kernels cannot run here")
def test_torch_export_of_the_fused_network_at_a_fixed_width(tmp_path):
    fused = EDSRCSD(scale=2, n_resblocks=2, n_feats=16, res_scale=0.5, backend="fused").eval()
    reference = EDSRCSD(**fused.config(), backend="reference").eval()
    reference.load_state_dict(fused.state_dict())
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.export.export(FixedWidth(fused, 0.5), (torch.rand(2, 3, 11, 9) * 255,),
                                  dynamic_shapes={"x": dims})
    code = program.graph_module.code
    for op in ("sliced_conv3x3", "residual_block", "conv3x3_pixel_shuffle"):
        assert f"torch.ops.csd_fast.{op}" in code  # the fused ops, not a decomposition
    path = tmp_path / "student.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for shape in [(1, 3, 8, 12), (3, 3, 13, 6)]:
        x = torch.rand(shape) * 255
        with torch.no_grad():
            expected = reference(x, 0.5)
            assert (expected - reference(x, 1.0)).abs().max() > 1.0
            for run in (program.module(), loaded):
                close(run(x), expected, reference, rel=1e-5)


# --- errors ------------------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path):
    return source_checkpoint(tmp_path, make_model(2, **CONFIGS["baseline"]))


@pytest.mark.parametrize("width", [0, -0.25, 1.5, math.nan, "0.5", True])
def test_width_out_of_range(tmp_path, source, width):
    with pytest.raises(ValueError, match=r"^width must be a number in \(0, 1\], got "):
        export_checkpoint(source, width, "csd_fast", tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists()


def test_width_of_no_channel(tmp_path, source):
    with pytest.raises(ValueError, match=r"at width 0.01: width 0.01 gives int\(32 \* 0.01\) = 0 channels; "
                                         r"the smallest width for n_feats=32 is 0.03125"):
        export_checkpoint(source, 0.01, "basicsr", tmp_path / "s.pth")
    assert not (tmp_path / "s.pth").exists()


def test_unknown_format(tmp_path, source):
    with pytest.raises(ValueError, match="^unknown export format 'tflite'; choose one of "
                                         "csd_fast, edsr_pytorch, basicsr, onnx$"):
        export_checkpoint(source, 0.5, "tflite", tmp_path / "s.tflite")


@pytest.mark.parametrize("overwrite", [False, True])
def test_never_writes_over_the_checkpoint(tmp_path, source, overwrite):
    before = source.read_bytes()
    os.link(source, tmp_path / "hard_link.safetensors")
    for output in (source, tmp_path / "." / source.name, tmp_path / "hard_link.safetensors"):
        with pytest.raises(ValueError, match="^refusing to overwrite an input: output .* is the input checkpoint"):
            export_checkpoint(source, 0.5, "csd_fast", output, overwrite=overwrite)
    assert source.read_bytes() == before


def test_existing_output_needs_overwrite(tmp_path, source):
    out = tmp_path / "s.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"s.pt already exists; pass overwrite=True \(--overwrite\)"):
        export_checkpoint(source, 0.5, "edsr_pytorch", out)
    assert out.read_bytes() == b"keep me"
    export_checkpoint(source, 0.5, "edsr_pytorch", out, overwrite=True)
    assert load_checkpoint(out).n_feats == 16
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="folder is a folder; give a file name"):
        export_checkpoint(source, 0.5, "edsr_pytorch", tmp_path / "folder", overwrite=True)


def test_bad_or_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nothing.pt"):
        export_checkpoint(tmp_path / "nothing.pt", 0.5, "csd_fast", tmp_path / "s.safetensors")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"these are not weights")
    with pytest.raises(ValueError, match=r"^cannot export .*garbage.pt: not a checkpoint: "):
        export_checkpoint(garbage, 0.5, "csd_fast", tmp_path / "s.safetensors")
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.rand(2, 2)}, foreign)
    with pytest.raises(ValueError, match=r"^cannot export .*foreign.pt: unknown checkpoint layout"):
        export_checkpoint(foreign, 0.5, "csd_fast", tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists()


def test_export_student_wants_an_edsrcsd():
    with pytest.raises(TypeError, match="expected an EDSRCSD model, got Conv2d"):
        export_student(nn.Conv2d(3, 3, 3), 0.5)
    with pytest.raises(ValueError, match=r"width must be in \(0, 1\], got 2"):
        FixedWidth(make_model(2, **CONFIGS["baseline"]), 2)
