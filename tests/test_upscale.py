"""csd-fast upscale: bit depth, alpha and greyscale carried through, bad files reported,
inputs never overwritten, the checkpoint's width used by default."""
import struct

import numpy as np
import png
import pytest
import torch
from PIL import Image

from csd_fast import EDSRCSD, save_checkpoint
from csd_fast.cli import main
from csd_fast.data import imresize
from csd_fast.inference import upscale
from csd_fast.upscale import UnreadableImage, read_picture


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
    # the default --dtype auto, which picks bfloat16 on a CPU with bf16 instructions, runs a
    # 16-bit image in float32: bf16's output keeps 8 bits of mantissa, about 8 bits of levels
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


def random_png(path, seed=0, size=(6, 7)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def with_bad_idat_crc(path):
    """The PNG at path with its pixel chunk's checksum broken: PIL still decodes it, pypng does not."""
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_broken_files_are_named_before_any_work(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    random_png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run([tmp_path], tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err
    assert "bad.png: not a readable image" in err
    assert "%|" not in err  # no progress bar before the error
    assert not (tmp_path / "out").exists()  # nothing written, ok.png included
    assert run([tmp_path], tmp_path / "out", ckpt, "--skip-unreadable") == 0
    assert (tmp_path / "out" / "ok.png").exists()
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "skipped 1 unreadable" in captured.out


def test_png_damage_that_pil_accepts_is_found_up_front(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    with_bad_idat_crc(random_png(tmp_path / "crc.png"))
    with Image.open(tmp_path / "crc.png") as im:
        im.load()  # PIL alone would let it through to the upscaling loop
    assert run([tmp_path / "crc.png"], tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err
    assert "crc.png: not a readable image" in err and "Checksum error" in err and "%|" not in err
    assert not (tmp_path / "out").exists()


def test_damage_found_only_while_upscaling_is_still_clear(tmp_path, checkpoint, capsys, monkeypatch):
    import csd_fast.upscale
    _, ckpt = checkpoint
    monkeypatch.setattr(csd_fast.upscale, "check_readable", lambda path: None)  # as if it saw nothing
    random_png(tmp_path / "a.png")
    with_bad_idat_crc(random_png(tmp_path / "crc.png", 1))
    assert run([tmp_path], tmp_path / "out", ckpt) == 2
    err_lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("csd-fast upscale: error: ") and "crc.png: not a readable image" in line
               for line in err_lines)  # on a line of its own, after the bar
    assert run([tmp_path], tmp_path / "out", ckpt, "--skip-unreadable", "--overwrite") == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "crc.png" in captured.err
    assert captured.out.splitlines()[-1] == f"wrote 1 image(s) to {tmp_path / 'out'}; skipped 1 unreadable"


def test_error_names_the_kind_once(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UnreadableImage) as info:
        read_picture(tmp_path / "bad.png")
    message = str(info.value)
    assert "(FormatError: Chunk" in message and message.count("FormatError") == 1


def test_never_overwrites_an_input(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    photos = tmp_path / "photos"
    photos.mkdir()
    original = random_png(photos / "astronaut.png").read_bytes()
    (tmp_path / "link").symlink_to(photos)
    for out in (photos, tmp_path / "photos" / ".." / "photos", tmp_path / "link"):
        assert run([photos], out, ckpt) == 2
        err = capsys.readouterr().err
        assert "refusing to overwrite an input" in err and "is the input image" in err, out
        assert "astronaut.png" in err and len(err.splitlines()) == 1, out
        assert run([photos], out, ckpt, "--overwrite") == 2  # not even with --overwrite
        capsys.readouterr()
    assert (photos / "astronaut.png").read_bytes() == original
    assert sorted(p.name for p in photos.iterdir()) == ["astronaut.png"]


def test_an_input_folder_may_take_outputs_of_other_names(tmp_path, checkpoint):
    _, ckpt = checkpoint
    random_png(tmp_path / "photo.jpg")
    assert run([tmp_path / "photo.jpg"], tmp_path, ckpt) == 0
    with Image.open(tmp_path / "photo.png") as im:
        assert im.size == (14, 12)


def test_existing_outputs_need_overwrite_and_nothing_is_done_without(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    random_png(tmp_path / "a.png", 0)
    random_png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"an older file")
    assert run([tmp_path / "a.png", tmp_path / "b.png"], out, ckpt) == 2
    assert f"-o {out / 'b.png'} already exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # a.png not written either
    assert (out / "b.png").read_bytes() == b"an older file"
    assert run([tmp_path / "a.png", tmp_path / "b.png"], out, ckpt, "--overwrite") == 0
    with Image.open(out / "b.png") as im:
        assert im.size == (14, 12)


def test_says_what_was_written_where(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    random_png(tmp_path / "a.png", 0)
    random_png(tmp_path / "b.jpg", 1)
    assert run([tmp_path / "a.png", tmp_path / "b.jpg"], tmp_path / "out", ckpt) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"wrote {tmp_path / 'out' / 'a.png'} (from {tmp_path / 'a.png'})" in lines
    assert f"wrote {tmp_path / 'out' / 'b.png'} (from {tmp_path / 'b.jpg'})" in lines
    assert lines[-1] == f"wrote 2 image(s) to {tmp_path / 'out'}"


def test_output_folder_that_is_a_file_is_an_error(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    random_png(tmp_path / "a.png")
    (tmp_path / "out").write_text("a file")
    assert run([tmp_path / "a.png"], tmp_path / "out", ckpt) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_width_defaults_to_the_checkpoints(tmp_path, capsys):
    torch.manual_seed(0)
    model = EDSRCSD(2, 1, 8, 1.0)
    student = save_checkpoint(model, tmp_path / "student.safetensors", default_width=0.5)
    rgb = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().unsqueeze(0)

    def upscaled_at(width):
        want = upscale(model, x, width)[0].round().clamp(0, 255).permute(1, 2, 0).numpy()
        return want.astype(np.uint8)

    # the widths are told apart, beyond the rounding tolerance below
    assert np.abs(upscaled_at(0.5).astype(int) - upscaled_at(1.0)).max() > 2
    assert run([tmp_path / "a.png"], tmp_path / "default", student) == 0
    assert "width 0.5 (from the checkpoint; --width overrides)" in capsys.readouterr().out
    got, _ = read_png(tmp_path / "default" / "a.png")
    assert np.abs(got.astype(int) - upscaled_at(0.5)).max() <= 1
    assert run([tmp_path / "a.png"], tmp_path / "full", student, "--width", "1") == 0
    got, _ = read_png(tmp_path / "full" / "a.png")
    assert np.abs(got.astype(int) - upscaled_at(1.0)).max() <= 1


def test_checkpoint_without_a_width_runs_at_1_and_says_so(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    random_png(tmp_path / "a.png")
    assert run([tmp_path / "a.png"], tmp_path / "out", ckpt) == 0
    assert "width 1 (the checkpoint records no width; --width picks another)" in capsys.readouterr().out


def test_name_collisions_and_missing_inputs(tmp_path, checkpoint):
    _, ckpt = checkpoint
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "x.jpg")
    assert run([tmp_path / "a", tmp_path / "x.jpg"], tmp_path / "out", ckpt) == 2
    assert run([tmp_path / "nope.png"], tmp_path / "out", ckpt) == 2
