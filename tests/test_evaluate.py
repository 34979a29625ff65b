"""The evaluator: protocol numbers on the real benchmark sets, reports, tiling, CLI."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import (PSNR_TOL, PUBLISHED_BICUBIC, SET14_PSNR_TOL, SET14_SSIM_TOL, SSIM_TOL,
                   dataset_dir, param)
from csd_fast import EDSRCSD, save_checkpoint
from csd_fast.cli import main
from csd_fast.evaluation import evaluate

# The tolerances and the reasons for them are in tests/_data.py.
TOLERANCE = {"Set5": (PSNR_TOL, SSIM_TOL), "Set14": (SET14_PSNR_TOL, SET14_SSIM_TOL)}


@pytest.mark.parametrize("name,scale", [param(name, scale) for name, scale in PUBLISHED_BICUBIC])
def test_bicubic_rows_match_the_literature(name, scale):
    result = evaluate(None, [dataset_dir(name)], scale, progress=False)[name]["bicubic"]
    psnr, ssim = PUBLISHED_BICUBIC[(name, scale)]
    psnr_tol, ssim_tol = TOLERANCE[name]
    assert abs(result["psnr"] - psnr) < psnr_tol, result
    assert abs(result["ssim"] - ssim) < ssim_tol, result


def tiny_model(scale=2):
    torch.manual_seed(0)
    return EDSRCSD(scale, 1, 8, 1.0)


def make_hr_folder(root: Path, count=3, size=(26, 30)):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 255, (size[0] // 2, size[1] // 2, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((size[1], size[0]), Image.BICUBIC)
        img.save(root / f"img{i}.png")
    return root


def test_model_row_is_the_mean_of_per_image_numbers(tmp_path):
    folder = make_hr_folder(tmp_path / "mini")
    result = evaluate(tiny_model(), [folder], 2, progress=False)["mini"]
    images = result["images"]
    assert len(images) == 3
    assert result["model"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in images]))
    assert result["bicubic"]["ssim"] == pytest.approx(np.mean([r["bicubic_ssim"] for r in images]))


def test_saved_images_are_what_was_scored(tmp_path):
    folder = make_hr_folder(tmp_path / "mini", count=1)
    model = tiny_model()
    evaluate(model, [folder], 2, save_images=tmp_path / "sr", progress=False)
    saved = np.asarray(Image.open(tmp_path / "sr" / "mini" / "img0.png"))
    hr = np.asarray(Image.open(folder / "img0.png").convert("RGB"))
    assert saved.shape == hr.shape and saved.dtype == np.uint8


def test_tiled_and_ensemble_evaluation(tmp_path):
    folder = make_hr_folder(tmp_path / "mini", count=2, size=(40, 34))
    model = tiny_model()
    plain = evaluate(model, [folder], 2, progress=False)["mini"]["model"]
    tiled = evaluate(model, [folder], 2, tile=6, progress=False)["mini"]["model"]
    assert tiled["psnr"] == pytest.approx(plain["psnr"], abs=1e-6)
    ensemble = evaluate(model, [folder], 2, ensemble=True, progress=False)["mini"]["model"]
    assert abs(ensemble["psnr"] - plain["psnr"]) > 1e-3  # a random net is not flip-equivariant


def test_errors(tmp_path):
    folder = make_hr_folder(tmp_path / "mini", count=1)
    with pytest.raises(ValueError, match="upscales x2 but --scale is 4"):
        evaluate(tiny_model(2), [folder], 4, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        evaluate(None, [folder], 2, dtype="int8", progress=False)
    with pytest.raises(ValueError, match="width"):
        evaluate(tiny_model(2), [folder], 2, width=0.01, progress=False)


def test_cli_writes_table_json_and_csv(tmp_path, capsys):
    folder = make_hr_folder(tmp_path / "mini", count=2)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model(), ckpt)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["eval", "--checkpoint", str(ckpt), "--data", str(folder), "--width", "0.5",
                 "--device", "cpu", "--json", str(out_json), "--csv", str(out_csv)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bicubic" in printed and "width 0.5" in printed
    report = json.loads(out_json.read_text())
    assert report["meta"]["scale"] == 2 and "mini" in report["results"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == ["img0", "img1"]
    assert float(rows[0]["psnr"]) == pytest.approx(report["results"]["mini"]["images"][0]["psnr"])


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "missing"), "--scale", "2",
                 "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(tmp_path), "--scale", "2", "--width", "1.5"])


def test_cli_decodes_each_image_once_and_checks_them_all_first(tmp_path, monkeypatch, capsys):
    """Every file is checked before the first image is upscaled (a PNG by its checksums, not by
    decoding it), then decoded once, for scoring."""
    from PIL import ImageFile

    folder = make_hr_folder(tmp_path / "mini", count=3)
    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.safetensors")
    decoded = []
    real_load = ImageFile.ImageFile.load
    def load(im):  # PIL calls load() again on a loaded image; only a pending tile is a decode
        if im.tile:
            decoded.append(Path(im.filename).name)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(folder), "--device", "cpu",
                 "--json", str(tmp_path / "r.json"), "--csv", ""]) == 0
    assert sorted(decoded) == ["img0.png", "img1.png", "img2.png"]
    capsys.readouterr()
    # damage the last file's pixel data: found before the first image is written
    data = bytearray((folder / "img2.png").read_bytes())
    data[data.find(b"IDAT") + 10] ^= 0xFF
    (folder / "img2.png").write_bytes(bytes(data))
    decoded.clear()
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(folder), "--device", "cpu",
                 "--json", "", "--csv", "", "--save-images", str(tmp_path / "sr")]) == 2
    err = capsys.readouterr().err
    assert "img2.png: damaged or truncated" in err and "%|" not in err
    assert decoded == [] and not (tmp_path / "sr").exists()
