"""csd-fast upscale: bit depth, alpha and greyscale carried through, bad files reported."""
import numpy as np
import png
import pytest
import torch
from PIL import Image

from csd_fast import EDSRCSD, save_checkpoint
from csd_fast.cli import main
from csd_fast.data import imresize
from csd_fast.inference import upscale


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = EDSRCSD(2, 1, 8, 1.0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    return model, path


def write_png(path, pixels, bitdepth, greyscale=False, alpha=False):
    h, w = pixels.shape[:2]
    writer = png.Writer(w, h, greyscale=greyscale, alpha=alpha, bitdepth=bitdepth)
    with open(path, "wb") as f:
        writer.write(f, pixels.reshape(h, -1))


def read_png(path):
    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    return np.vstack([np.asarray(r) for r in rows]).reshape(h, w, info["planes"]), info


def run(inputs, out, ckpt, *extra):
    return main(["upscale", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt),
                 "--device", "cpu", *extra])


def test_8bit_rgb_matches_the_model(tmp_path, checkpoint):
    model, ckpt = checkpoint
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert run([tmp_path / "a.png"], tmp_path / "out", ckpt, "--width", "0.5") == 0
    got, info = read_png(tmp_path / "out" / "a.png")
    assert info["bitdepth"] == 8 and got.shape == (18, 22, 3)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().unsqueeze(0)
    want = upscale(model, x, 0.5)[0].round().clamp(0, 255).permute(1, 2, 0).numpy()
    assert np.abs(got.astype(float) - want).max() <= 1


def test_16bit_stays_16bit_and_alpha_is_bicubic(tmp_path, checkpoint):
    _, ckpt = checkpoint
    rgba = np.random.default_rng(1).integers(0, 65536, (7, 8, 4), dtype=np.uint16)
    write_png(tmp_path / "deep.png", rgba, 16, alpha=True)
    assert run([tmp_path / "deep.png"], tmp_path / "out", ckpt) == 0
    got, info = read_png(tmp_path / "out" / "deep.png")
    assert info["bitdepth"] == 16 and info["alpha"] and got.shape == (14, 16, 4)
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float64) / 65535)[None]
    want = (imresize(alpha, 2).clamp(0, 1) * 65535).round()[0].numpy()
    assert np.abs(got[..., 3].astype(float) - want).max() <= 1
    assert len(np.unique(got[..., :3])) > 256  # real 16-bit levels, not 8-bit ones scaled


def test_greyscale_stays_greyscale(tmp_path, checkpoint):
    _, ckpt = checkpoint
    grey = np.random.default_rng(2).integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    assert run([tmp_path], tmp_path / "out", ckpt) == 0
    got, info = read_png(tmp_path / "out" / "g.png")
    assert info["greyscale"] and got.shape == (12, 10, 1)


def test_broken_files_are_named(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    Image.fromarray(np.zeros((4, 4, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run([tmp_path], tmp_path / "out", ckpt) == 2
    assert "bad.png" in capsys.readouterr().err
    assert run([tmp_path], tmp_path / "out", ckpt, "--skip-unreadable") == 0
    assert (tmp_path / "out" / "ok.png").exists()
    assert "skipped" in capsys.readouterr().err


def test_name_collisions_and_missing_inputs(tmp_path, checkpoint):
    _, ckpt = checkpoint
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "x.jpg")
    assert run([tmp_path / "a", tmp_path / "x.jpg"], tmp_path / "out", ckpt) == 2
    assert run([tmp_path / "nope.png"], tmp_path / "out", ckpt) == 2
