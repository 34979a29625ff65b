"""csd-fast demo: a tiny end-to-end run on generated images, and its clear errors."""
import csv
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from csd_fast import demo
from csd_fast.cli import main as cli_main
from csd_fast.demo.figures import detailed_region, side_by_side
from csd_fast.train.curves import ALONE_COLOUR, STUDENT_COLOUR, TEACHER_COLOUR

TINY = ["--iterations", "2", "--csd-iterations", "2", "--patch", "8", "--batch", "2",
        "--neg-num", "2", "--quiet", "--device", "cpu"]


def smooth_images(folder, n, size=48):
    """Random but smooth RGB images: low-resolution noise upscaled, so SR has something to learn."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        noise = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((size + 2 * i, size), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def test_demo_end_to_end_on_own_data(tmp_path, capsys):
    data = smooth_images(tmp_path / "data", 4)
    out = tmp_path / "out"
    assert cli_main(["demo", "--data", str(data), "--output", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "RANDOM weights" in text and "bicubic" in text and "student" in text
    for name in ("side_by_side.png", "training_curves.png", "results.json", "table.txt",
                 "runs/teacher/log.csv", "runs/csd/log.csv", "runs/csd/best.safetensors",
                 "runs/teacher/curves.png", "runs/csd/curves.png"):
        assert (out / name).is_file(), name
    assert "CSD student vs student alone:" in text
    report = json.loads((out / "results.json").read_text())
    methods = ("bicubic", "student_alone", "student", "teacher", "csd_teacher", "slim_student")
    assert set(report["results"]) == set(methods)
    assert all(np.isfinite(report["results"][k]["psnr"]) for k in methods)
    # the student trained alone ran as long as the CSD student's two stages together
    assert [int(r["iteration"]) for r in csv.DictReader(open(out / "runs/student_alone/log.csv"))][-1] == 4
    # the exported slim network is the CSD student: same scores, its parameters only
    assert report["results"]["slim_student"] == report["results"]["student"]
    assert report["params"]["slim_student"] == report["params"]["student"]
    assert set(report["cpu_ms_per_image"]) == {"teacher", "slim_student"}
    assert all(v > 0 for v in report["cpu_ms_per_image"].values())
    table = (out / "table.txt").read_text()
    assert "student alone (L1, width 0.5)" in table and "exported slim student" in table
    assert report["train_images"] == ["img0.png", "img1.png", "img2.png"]
    assert report["heldout_images"] == ["img3.png"]
    assert report["params"]["student"] < report["params"]["teacher"]
    with Image.open(out / "side_by_side.png") as im:
        assert im.size[0] > 3 * im.size[1]  # six columns (where, five methods), one row
    with Image.open(out / "training_curves.png") as im:
        assert im.size == (720, 830)  # both stages in one figure: L1, contrastive, PSNR panels
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert {TEACHER_COLOUR, STUDENT_COLOUR, ALONE_COLOUR} <= colours
    # the student checkpoint loads like any other, and says which width it is for
    import csd_fast
    model = csd_fast.load_checkpoint(out / "runs" / "csd" / "best.safetensors")
    assert model.scale == 2 and model.default_width == demo.STUDENT_WIDTH
    # a second run into the same folder refuses rather than mixing runs
    assert cli_main(["demo", "--data", str(data), "--output", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_missing_tensorboard_is_said_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    data = smooth_images(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert cli_main(["demo", "--data", str(data), "--output", str(out), *TINY, "--iterations", "1",
                     "--csd-iterations", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("TensorBoard logging is off") == 1 and "pip install tensorboard" in text
    assert (out / "runs" / "csd" / "log.csv").is_file()
    assert not (out / "runs" / "teacher" / "tensorboard").exists()


def test_too_few_images_is_a_clear_error(tmp_path, capsys):
    data = smooth_images(tmp_path / "data", 1)
    assert cli_main(["demo", "--data", str(data), "--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "found 1" in err


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["demo", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_missing_scikit_image_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo.photos, "_skimage_spec", lambda: None)
    assert cli_main(["demo", "--output", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "pip install scikit-image" in err and "--data" in err
    assert not (tmp_path / "o").exists()  # nothing written before the error


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image is not installed")
def test_bundled_photographs_are_found_without_importing_skimage():
    import subprocess
    import sys
    train, held = demo.bundled_photos()
    assert len(train) >= 5 and 2 <= len(held) <= 3
    assert all(p.is_file() for p in train + held)
    assert not {p.name for p in train} & {p.name for p in held}
    # importing skimage takes seconds; the finder must only locate it (checked in a fresh process)
    code = "import sys, csd_fast.demo as d; d.bundled_photos(); assert 'skimage' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_setting_is_a_clear_error(tmp_path, capsys):
    data = smooth_images(tmp_path / "data", 3)
    args = ["demo", "--data", str(data), "--output", str(tmp_path / "o"), *TINY, "--iterations", "0"]
    assert cli_main(args) == 2
    assert "iterations" in capsys.readouterr().err


def test_images_smaller_than_the_patch_are_a_clear_error(tmp_path, capsys):
    data = smooth_images(tmp_path / "data", 3, size=12)
    assert cli_main(["demo", "--data", str(data), "--output", str(tmp_path / "o"), *TINY,
                      "--patch", "16"]) == 2
    assert "--patch" in capsys.readouterr().err


def test_the_region_shown_is_where_the_detail_is():
    """A flat photo with one patch of noise: the window picked is on the patch, and never
    closer to the edge than the margin (the border the PSNR protocol crops)."""
    gen = torch.Generator().manual_seed(3)
    flat = torch.full((3, 60, 80), 120, dtype=torch.uint8)
    hr = flat.clone()
    hr[:, 30:46, 41:57] = torch.randint(0, 256, (3, 16, 16), generator=gen, dtype=torch.uint8)
    y, x = detailed_region(hr, 16, 2)
    assert abs(y - 30) <= 1 and abs(x - 41) <= 1
    corner = flat.clone()
    corner[:, :10, :10] = torch.randint(0, 256, (3, 10, 10), generator=gen, dtype=torch.uint8)
    assert detailed_region(corner, 16, 2) == (2, 2)
    corner = flat.clone()
    corner[:, -10:, -10:] = torch.randint(0, 256, (3, 10, 10), generator=gen, dtype=torch.uint8)
    assert detailed_region(corner, 16, 2) == (60 - 2 - 16, 80 - 2 - 16)
    with pytest.raises(ValueError, match="no 58x58 window"):
        detailed_region(hr, 58, 2)


def find(sheet: np.ndarray, block: np.ndarray) -> list[tuple[int, int]]:
    """Where block appears, pixel for pixel, in sheet (both H x W x 3)."""
    h, w = block.shape[:2]
    starts = np.argwhere((sheet == block[0, 0]).all(-1))
    return [(int(y), int(x)) for y, x in starts
            if np.array_equal(sheet[y:y + h, x:x + w], block)]


def test_side_by_side_shows_each_crop_enlarged_pixel_for_pixel(tmp_path):
    gen = torch.Generator().manual_seed(4)
    hr = torch.randint(0, 256, (3, 40, 50), generator=gen, dtype=torch.uint8)
    crops = [torch.randint(0, 256, (3, 12, 12), generator=gen, dtype=torch.uint8) for _ in range(3)]
    rows = [{"image": "noise", "hr": hr, "region": (5, 7, 12), "crops": crops, "psnr": [20.5, 31.25, None]}]
    side_by_side(rows, ["a", "b", "HR"], tmp_path / "s.png", 3, ["caption"])
    sheet = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    found = []
    for crop in crops:
        enlarged = crop.permute(1, 2, 0).numpy().repeat(3, 0).repeat(3, 1)  # nearest neighbour, x3
        (where,) = find(sheet, enlarged)
        found.append(where)
    # one row, left to right in column order
    assert len({y for y, _ in found}) == 1 and [x for _, x in found] == sorted(x for _, x in found)
