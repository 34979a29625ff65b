"""Checkpoint loading: each foreign layout against its own network, and the project's format.

The forward functions here run each layout's network straight from its state dict, so a
wrong key mapping, mean shift or upsampler order shows up as a different output.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from csd_fast.archs import EDSRCSD
from csd_fast.checkpoint import (
    FORMAT_TAG,
    convert_state_dict,
    detect_layout,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)

MEAN = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float64)
N_FEATS, N_BLOCKS = 8, 2


def rand(*shape: int) -> torch.Tensor:
    # Small, never-zero weights keep activations O(1) through the residual stack.
    magnitude = torch.rand(shape, dtype=torch.float64) + 0.1
    return magnitude * torch.sign(torch.randn(shape, dtype=torch.float64)) * 0.1


def conv_params(sd: dict, name: str, n_out: int, n_in: int, meta: bool = False) -> None:
    make = (lambda *shape: torch.empty(shape, device="meta")) if meta else rand
    sd[f"{name}.weight"] = make(n_out, n_in, 3, 3)
    sd[f"{name}.bias"] = make(n_out)


def stages(scale: int) -> list[int]:
    return [3] if scale == 3 else [2] * (scale // 2)


def conv(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def mean_shift(sd: dict, shift: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    sd["sub_mean.weight"], sd["sub_mean.bias"] = eye.clone(), -shift
    sd["add_mean.weight"], sd["add_mean.bias"] = eye.clone(), shift.clone()


# --- EDSR-PyTorch -----------------------------------------------------------------------

def edsr_pytorch_state(scale: int, f: int = N_FEATS, n: int = N_BLOCKS, shift=None, meta=False) -> dict:
    sd: dict = {}
    mean_shift(sd, 255 * MEAN if shift is None else shift)
    conv_params(sd, "head.0", f, 3, meta)
    for i in range(n):
        conv_params(sd, f"body.{i}.body.0", f, f, meta)
        conv_params(sd, f"body.{i}.body.2", f, f, meta)
    conv_params(sd, f"body.{n}", f, f, meta)
    for j, s in enumerate(stages(scale)):
        conv_params(sd, f"tail.0.{2 * j}", s * s * f, f, meta)
    conv_params(sd, "tail.1", 3, f, meta)
    return sd


def edsr_pytorch_forward(sd: dict, x: torch.Tensor, scale: int, res_scale: float = 1.0) -> torch.Tensor:
    n = sum(1 for k in sd if k.endswith(".body.0.weight"))
    x = F.conv2d(x, sd["sub_mean.weight"], sd["sub_mean.bias"])
    head = conv(x, sd, "head.0")
    res = head
    for i in range(n):
        res = res + res_scale * conv(F.relu(conv(res, sd, f"body.{i}.body.0")), sd, f"body.{i}.body.2")
    res = conv(res, sd, f"body.{n}") + head
    for j, s in enumerate(stages(scale)):
        res = F.pixel_shuffle(conv(res, sd, f"tail.0.{2 * j}"), s)
    out = conv(res, sd, "tail.1")
    return F.conv2d(out, sd["add_mean.weight"], sd["add_mean.bias"])


# --- BasicSR ----------------------------------------------------------------------------

def basicsr_state(scale: int, f: int = N_FEATS, n: int = N_BLOCKS) -> dict:
    sd: dict = {}
    conv_params(sd, "conv_first", f, 3)
    for i in range(n):
        conv_params(sd, f"body.{i}.conv1", f, f)
        conv_params(sd, f"body.{i}.conv2", f, f)
    conv_params(sd, "conv_after_body", f, f)
    for j, s in enumerate(stages(scale)):
        conv_params(sd, f"upsample.{2 * j}", s * s * f, f)
    conv_params(sd, "conv_last", 3, f)
    return sd


def basicsr_forward(sd: dict, x: torch.Tensor, scale: int, res_scale: float = 1.0) -> torch.Tensor:
    n = sum(1 for k in sd if k.endswith(".conv1.weight"))
    mean = MEAN.view(1, 3, 1, 1).to(x.dtype)
    feat = conv((x - mean) * 255, sd, "conv_first")
    res = feat
    for i in range(n):
        res = res + res_scale * conv(F.relu(conv(res, sd, f"body.{i}.conv1")), sd, f"body.{i}.conv2")
    res = conv(res, sd, "conv_after_body") + feat
    for j, s in enumerate(stages(scale)):
        res = F.pixel_shuffle(conv(res, sd, f"upsample.{2 * j}"), s)
    return conv(res, sd, "conv_last") / 255 + mean


# --- CSD reference (model_state_dict from DataParallel) ---------------------------------

def csd_state(scale: int, f: int = N_FEATS, n: int = N_BLOCKS) -> dict:
    sd: dict = {}
    mean_shift(sd, 255 * MEAN)
    conv_params(sd, "head", f, 3)
    for i in range(n):
        conv_params(sd, f"body.{i}.conv1", f, f)
        conv_params(sd, f"body.{i}.conv2", f, f)
    conv_params(sd, "body_conv", f, f)
    for j, s in enumerate(stages(scale)):
        conv_params(sd, f"upsampler.blocks.{j}", s * s * f, f)
    conv_params(sd, "tail_conv", 3, f)
    return sd


def csd_forward(sd: dict, x: torch.Tensor, scale: int, width: float = 1.0) -> torch.Tensor:
    """The reference's width-sliced forward: every conv uses its weight prefix."""
    f = sd["head.weight"].shape[0]
    n = sum(1 for k in sd if k.endswith(".conv1.weight"))
    w = int(f * width)

    def sliced(x, name, n_out, n_in):
        return F.conv2d(x, sd[f"{name}.weight"][:n_out, :n_in], sd[f"{name}.bias"][:n_out], padding=1)

    x = F.conv2d(x, sd["sub_mean.weight"], sd["sub_mean.bias"])
    head = sliced(x, "head", w, 3)
    res = head
    for i in range(n):
        res = res + sliced(F.relu(sliced(res, f"body.{i}.conv1", w, w)), f"body.{i}.conv2", w, w)
    res = sliced(res, "body_conv", w, w) + head
    for j, s in enumerate(stages(scale)):
        res = F.pixel_shuffle(sliced(res, f"upsampler.blocks.{j}", s * s * w, w), s)
    out = sliced(res, "tail_conv", 3, w)
    return F.conv2d(out, sd["add_mean.weight"], sd["add_mean.bias"])


def image(rgb_range: float = 255.0) -> torch.Tensor:
    return torch.rand(2, 3, 6, 5, dtype=torch.float64) * rgb_range


def run(model: EDSRCSD, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        return model(x, width)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# --- layouts against their own networks -------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_matches_its_network(scale):
    sd = edsr_pytorch_state(scale)
    assert detect_layout(sd) == "edsr_pytorch"
    model = load_checkpoint(sd)
    assert (model.scale, model.n_feats, model.n_resblocks, model.rgb_range) == (scale, N_FEATS, N_BLOCKS, 255.0)
    assert model.head.weight.dtype == torch.float64
    x = image()
    assert_close(run(model, x), edsr_pytorch_forward(sd, x, scale))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_basicsr_matches_its_network(scale):
    sd = basicsr_state(scale)
    model = load_checkpoint({"params": sd})
    assert (model.scale, model.rgb_range, model.img_range) == (scale, 1.0, 255.0)
    x = image(1.0)
    assert_close(run(model, x), basicsr_forward(sd, x, scale))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_csd_reference_matches_its_network_teacher_and_student(scale):
    sd = csd_state(scale)
    wrapped = {"epoch": 3, "best_psnr": 30.5, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert detect_layout(wrapped) == "csd_reference"
    model = load_checkpoint(wrapped)
    x = image()
    for width in (1.0, 0.5, 0.25):
        assert_close(run(model, x, width), csd_forward(sd, x, scale, width))


def test_basicsr_prefers_params_ema_and_param_key_chooses():
    ema, plain = basicsr_state(2), basicsr_state(2)
    both = {"params": plain, "params_ema": ema}
    x = image(1.0)
    assert_close(run(load_checkpoint(both), x), basicsr_forward(ema, x, 2))
    assert_close(run(load_checkpoint(both, param_key="params"), x), basicsr_forward(plain, x, 2))
    with pytest.raises(ValueError, match="param_key 'nope'.*params_ema"):
        load_checkpoint(both, param_key="nope")


def test_module_prefix_stripped_in_any_layout():
    sd = edsr_pytorch_state(4)
    model = load_checkpoint({f"module.{k}": v for k, v in sd.items()})
    x = image()
    assert_close(run(model, x), edsr_pytorch_forward(sd, x, 4))


def test_files_on_disk_pth_and_safetensors(tmp_path: Path):
    x = image()
    csd = csd_state(3)
    pth = tmp_path / "csd.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save({"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in csd.items()},
                "optimizer_state_dict": optimizer}, pth)
    assert_close(run(load_checkpoint(pth), x), csd_forward(csd, x, 3))

    edsr = edsr_pytorch_state(2)
    plain = tmp_path / "edsr.safetensors"
    safetensors.torch.save_file(edsr, plain)
    assert_close(run(load_checkpoint(str(plain)), x), edsr_pytorch_forward(edsr, x, 2))

    basic = basicsr_state(4)
    torch.save({"params_ema": basic}, tmp_path / "basicsr.pth")
    y = image(1.0)
    assert_close(run(load_checkpoint(tmp_path / "basicsr.pth"), y), basicsr_forward(basic, y, 4))


def test_res_scale_default_follows_paper_edsr_and_can_be_overridden():
    # Shapes only: a meta-device paper EDSR costs nothing to build.
    paper = edsr_pytorch_state(4, f=256, n=32, meta=True)
    assert convert_state_dict(paper)[1]["res_scale"] == 0.1
    assert convert_state_dict(paper, res_scale=0.5)[1]["res_scale"] == 0.5
    # a slim student cut from it (csd-fast export) keeps the paper's depth, and its res_scale
    student = edsr_pytorch_state(4, f=64, n=32, meta=True)
    assert convert_state_dict(student)[1]["res_scale"] == 0.1
    assert convert_state_dict(edsr_pytorch_state(2))[1]["res_scale"] == 1.0
    sd = edsr_pytorch_state(2)
    model = load_checkpoint(sd, res_scale=0.25)
    x = image()
    assert_close(run(model, x), edsr_pytorch_forward(sd, x, 2, res_scale=0.25))


# --- mean shift -------------------------------------------------------------------------

def test_non_default_mean_is_derived_from_sub_mean():
    sd = edsr_pytorch_state(2, shift=255 * torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64))
    model = load_checkpoint(sd)
    assert model.rgb_mean == pytest.approx((0.5, 0.4, 0.3))
    x = image()
    assert_close(run(model, x), edsr_pytorch_forward(sd, x, 2))


def test_checkpoint_trained_at_rgb_range_1_keeps_its_range():
    sd = edsr_pytorch_state(2, shift=MEAN.clone())
    model = load_checkpoint(sd)
    assert (model.rgb_range, model.img_range) == (1.0, 1.0)
    assert model.rgb_mean == pytest.approx(tuple(MEAN.tolist()))
    x = image(1.0)
    assert_close(run(model, x), edsr_pytorch_forward(sd, x, 2))


def test_mean_shift_with_std_or_mismatch_is_an_error():
    sd = edsr_pytorch_state(2)
    sd["sub_mean.weight"] = sd["sub_mean.weight"] / 0.5
    with pytest.raises(ValueError, match="sub_mean.weight is not the identity"):
        load_checkpoint(sd)
    sd = edsr_pytorch_state(2)
    sd["add_mean.bias"] = sd["add_mean.bias"] + 1
    with pytest.raises(ValueError, match="not opposite"):
        load_checkpoint(sd)
    with pytest.raises(ValueError, match="rgb_mean=.*disagrees"):
        load_checkpoint(edsr_pytorch_state(2), rgb_mean=(0.5, 0.5, 0.5))


# --- the project's own format -----------------------------------------------------------

def small_model(**kwargs) -> EDSRCSD:
    torch.manual_seed(0)
    model = EDSRCSD(scale=3, n_resblocks=2, n_feats=8, res_scale=0.5, rgb_mean=(0.4, 0.5, 0.6), **kwargs)
    return model.double()


def test_own_format_round_trip(tmp_path: Path):
    model = small_model(rgb_range=1.0, img_range=255.0)
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"note": "hello"})
    meta = read_metadata(path)
    assert meta["format"] == FORMAT_TAG and meta["note"] == "hello"
    loaded = load_checkpoint(path)
    assert loaded.config() == model.config()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = image(1.0)
    for width in (1.0, 0.25):
        assert torch.equal(run(loaded, x, width), run(model, x, width))


def test_default_width_round_trip(tmp_path: Path):
    model = small_model()
    path = save_checkpoint(model, tmp_path / "student.safetensors", default_width=0.25)
    assert read_metadata(path)["default_width"] == "0.25"
    loaded = load_checkpoint(path)
    assert loaded.default_width == 0.25
    # a loaded model saved again keeps the width it was trained for; an argument overrides it
    assert load_checkpoint(save_checkpoint(loaded, tmp_path / "again.safetensors")).default_width == 0.25
    assert load_checkpoint(save_checkpoint(loaded, tmp_path / "half.safetensors",
                                           default_width=0.5)).default_width == 0.5


def test_no_default_width_without_one_stored():
    # files written before default_width existed, and other layouts, do not say
    assert load_checkpoint(edsr_pytorch_state(2)).default_width is None


def test_no_default_width_in_an_older_file(tmp_path: Path):
    path = save_checkpoint(small_model(), tmp_path / "old.safetensors", metadata={"width": "0.25"})
    assert "default_width" not in read_metadata(path)
    assert load_checkpoint(path).default_width is None


@pytest.mark.parametrize("width, message", [
    (0.0, r"default_width: width must be in \(0, 1\]"), (1.5, r"default_width: width must be in \(0, 1\]"),
    (0.05, "default_width: width 0.05 gives int.* = 0 channels"),
    ("half", "default_width: width must be a number"),
])
def test_bad_default_width_is_refused_on_save(tmp_path: Path, width, message):
    with pytest.raises((TypeError, ValueError), match=message):
        save_checkpoint(small_model(), tmp_path / "m.safetensors", default_width=width)
    assert not (tmp_path / "m.safetensors").exists()


def test_default_width_is_reserved_metadata(tmp_path: Path):
    with pytest.raises(ValueError, match="'default_width' is reserved"):
        save_checkpoint(small_model(), tmp_path / "m.safetensors", metadata={"default_width": "0.5"})


@pytest.mark.parametrize("text", ["abc", "0", "2.5", "nan"])
def test_damaged_default_width_is_an_error(tmp_path: Path, text):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors", default_width=0.5)
    tensors = safetensors.torch.load_file(path)
    safetensors.torch.save_file(tensors, path, metadata={**read_metadata(path), "default_width": text})
    with pytest.raises(ValueError, match=rf"damaged header: default_width='{text}' is not a width"):
        load_checkpoint(path)


def test_own_format_overrides_and_structure_checks(tmp_path: Path):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    assert load_checkpoint(path, res_scale=1.0).res_scale == 1.0
    assert load_checkpoint(path, dtype=torch.float32).head.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="n_feats=16 was requested but the csd_fast weights have n_feats=8"):
        load_checkpoint(path, n_feats=16)
    with pytest.raises(ValueError, match="csd_fast checkpoint, not layout 'basicsr'"):
        load_checkpoint(path, layout="basicsr")


def test_plain_state_dict_of_our_model_loads():
    model = EDSRCSD(scale=4, n_resblocks=2, n_feats=8).double()
    assert detect_layout(model.state_dict()) == "csd_fast"
    loaded = load_checkpoint(model.state_dict())
    assert loaded.config() == model.config()
    x = image()
    assert torch.equal(run(loaded, x), run(model, x))


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = small_model()
    save_checkpoint(old, path)
    before = path.read_bytes()

    def boom(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    new = small_model()
    with torch.no_grad():
        new.head.weight.add_(1)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), path)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(small_model(rgb_range=1.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_new_file_gets_default_permissions(tmp_path: Path):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --- file errors ------------------------------------------------------------------------

def test_missing_corrupt_and_truncated_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_checkpoint(tmp_path / "nothere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02garbage after a pickle header")
    with pytest.raises(ValueError, match="garbage.pth.*corrupt or truncated"):
        load_checkpoint(garbage)
    good = save_checkpoint(small_model(), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(ValueError, match="cut.safetensors.*corrupt or truncated"):
        load_checkpoint(cut)
    zipped = tmp_path / "cut.pth"
    torch.save(edsr_pytorch_state(2), zipped)
    zipped.write_bytes(zipped.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pth.*corrupt or truncated"):
        load_checkpoint(zipped)


@pytest.mark.parametrize("name, content, why", [
    ("notes.txt", b"hello world\n", "it is a text file"),
    ("README.md", b"# A project\n\nSome text \xc3\xa9t\xc3\xa9\n", "it is a text file"),
    ("page.pth", b"<!DOCTYPE html><html>Not Found</html>", "it is an HTML page"),
    ("photo.pt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "it is a PNG image"),
    ("noise.bin", bytes(range(7, 250, 3)), "its first bytes match neither format"),
    ("model.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n",
     "it is a Git LFS pointer.*`git lfs pull`"),
    ("empty.pt", b"", "the file is empty"),
])
def test_a_file_that_is_no_checkpoint_says_so(tmp_path: Path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^not a checkpoint: .*{name} is neither .*\({why}") as info:
        load_checkpoint(path)
    assert "b'" not in str(info.value) and "\\x" not in str(info.value)  # words, never raw bytes


def test_legacy_torch_save_format_is_still_read(tmp_path: Path):
    sd = edsr_pytorch_state(2)
    path = tmp_path / "old.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    x = image()
    assert_close(run(load_checkpoint(path), x), edsr_pytorch_forward(sd, x, 2))


CALLED: list = []


def _side_effect() -> dict:
    CALLED.append(True)
    return {}


class Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_objects_are_refused_without_running_them(tmp_path: Path):
    path = tmp_path / "evil.pth"
    torch.save({"params": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth: refused.*execute code"):
        load_checkpoint(path)
    assert CALLED == []


# --- state-dict errors ------------------------------------------------------------------

def test_unknown_layout_lists_known_layouts_and_keys():
    with pytest.raises(ValueError, match=r"unknown checkpoint layout.*basicsr.*'foo\.weight'"):
        load_checkpoint({"foo.weight": torch.ones(1), "bar.bias": torch.ones(1)})
    with pytest.raises(ValueError, match="unknown layout 'keras'.*edsr_pytorch"):
        convert_state_dict(edsr_pytorch_state(2), layout="keras")


def test_wrong_shape_names_key_and_shapes():
    sd = csd_state(2)
    sd["body.1.conv1.weight"] = rand(8, 4, 3, 3)
    message = r"'body\.1\.conv1\.weight' has shape \(8, 4, 3, 3\) but expected \(8, 8, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        load_checkpoint({"model_state_dict": sd})
    sd = basicsr_state(2)
    sd["upsample.0.weight"] = rand(16, 8, 3, 3)
    message = r"'upsample\.0\.weight' has shape \(16, 8, 3, 3\); expected \(32, 8, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(sd)


def test_missing_key_is_named():
    sd = edsr_pytorch_state(4)
    del sd["body.0.body.2.bias"]
    with pytest.raises(ValueError, match=r"missing key 'body\.0\.body\.2\.bias'"):
        load_checkpoint(sd)
    sd = edsr_pytorch_state(4)
    del sd["add_mean.bias"]
    with pytest.raises(ValueError, match=r"missing key 'add_mean\.bias'"):
        load_checkpoint(sd)


def test_extra_key_is_named():
    sd = basicsr_state(2)
    sd["extra.weight"] = torch.ones(1)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) for the basicsr layout: 'extra\.weight'"):
        load_checkpoint(sd)
