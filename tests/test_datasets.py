"""Dataset folders in every supported layout, image decoding, and the errors for bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import dataset_dir, external_dir, external_root, needs, param
from csd_fast.data import (DatasetError, ImageReadError, SRFolder, find_pairs, imresize, read_image,
                           write_png)

# Odd sizes, so cropping HR to a multiple of the scale matters.
HR_SIZES = {"bird": (37, 29), "car": (26, 41), "dog": (31, 31)}


def noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def block_mean(hr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    blocks = hr[: h * scale, : w * scale].reshape(h, scale, w, scale, 3).astype(np.float64)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def hr_path(root: Path, layout: str, name: str, scale: int) -> Path:
    return {"div2k": root / "DIV2K_train_HR" / f"{name}.png",
            "edsr_benchmark": root / "HR" / f"{name}.png",
            "basicsr": root / "GTmod12" / f"{name}.png",
            "selfexsr": root / f"image_SRF_{scale}" / f"{name}_SRF_{scale}_HR.png",
            "hr_folder": root / f"{name}.png"}[layout]


def lr_path(root: Path, layout: str, name: str, scale: int) -> Path:
    return {"div2k": root / "DIV2K_train_LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png",
            "edsr_benchmark": root / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png",
            "basicsr": root / f"LRbicx{scale}" / f"{name}.png",
            "selfexsr": root / f"image_SRF_{scale}" / f"{name}_SRF_{scale}_LR.png"}[layout]


def make_set(root: Path, layout: str, scales=(2, 3), sizes=HR_SIZES) -> dict:
    """Write a tiny set; returns {(name, scale): (hr cropped, lr)} as uint8 (3, h, w) tensors."""
    expected = {}
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        hr = noise(h, w, seed)
        for scale in scales:
            save(hr_path(root, layout, name, scale), hr)
            crop = hr[: h // scale * scale, : w // scale * scale]
            lr = None
            if layout != "hr_folder":
                lr = block_mean(hr, scale)
                save(lr_path(root, layout, name, scale), lr)
            expected[name, scale] = (torch.from_numpy(crop).permute(2, 0, 1),
                                     None if lr is None else torch.from_numpy(lr).permute(2, 0, 1))
    return expected


PAIRED = ["div2k", "edsr_benchmark", "basicsr", "selfexsr"]


@pytest.mark.parametrize("layout", PAIRED)
@pytest.mark.parametrize("scale", [2, 3])
def test_paired_layouts(tmp_path, layout, scale):
    root = tmp_path / "MySet"
    expected = make_set(root, layout, scales=(2, 3))
    for given in ("auto", layout):
        data = SRFolder(root, scale, layout=given)
        assert data.layout == layout
        assert data.name == ("DIV2K_train" if layout == "div2k" else "MySet")
        assert len(data) == 3
        assert [p.name for p in find_pairs(root, scale)] == sorted(HR_SIZES)
        for name, lr, hr in data:
            want_hr, want_lr = expected[name, scale]
            assert lr.dtype == hr.dtype == torch.uint8
            assert tuple(hr.shape) == (3, lr.shape[1] * scale, lr.shape[2] * scale)
            assert torch.equal(hr, want_hr) and torch.equal(lr, want_lr)


@pytest.mark.parametrize("layout,hr_folder", [("div2k", "DIV2K_train_HR"), ("edsr_benchmark", "HR"),
                                              ("basicsr", "GTmod12"), ("selfexsr", "image_SRF_2")])
def test_pointing_at_the_hr_folder(tmp_path, layout, hr_folder):
    make_set(tmp_path / "MySet", layout, scales=(2,))
    data = SRFolder(tmp_path / "MySet" / hr_folder, 2)
    assert data.layout == layout and len(data) == 3
    assert all(p.lr_path is not None for p in data.pairs)


def test_selfexsr_scale_folder_of_another_scale(tmp_path):
    make_set(tmp_path / "MySet", "selfexsr", scales=(2, 3))
    with pytest.raises(DatasetError, match="holds x2 images but the scale asked for is x3"):
        SRFolder(tmp_path / "MySet" / "image_SRF_2", 3)


def test_div2k_without_lr_folder_makes_lr(tmp_path):
    make_set(tmp_path, "div2k", scales=(2,))
    for path in (tmp_path / "DIV2K_train_LR_bicubic").rglob("*.png"):
        path.unlink()
    (tmp_path / "DIV2K_train_LR_bicubic" / "X2").rmdir()
    (tmp_path / "DIV2K_train_LR_bicubic").rmdir()
    data = SRFolder(tmp_path / "DIV2K_train_HR", 2)
    name, lr, hr = data[0]
    assert data.layout == "div2k" and data.pairs[0].lr_path is None
    assert torch.equal(lr, (imresize(hr, 0.5) + 0.5).floor().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_hr_folder_makes_matlab_bicubic_lr(tmp_path, scale):
    root = tmp_path / "mini"
    expected = make_set(root, "hr_folder", scales=(scale,))
    (root / "notes.txt").write_text("not an image, and not in a supported suffix")
    data = SRFolder(root, scale)
    assert data.layout == "hr_folder" and data.name == "mini" and len(data) == 3
    for name, lr, hr in data:
        want_hr, _ = expected[name, scale]
        assert torch.equal(hr, want_hr)
        want_lr = (imresize(want_hr, 1 / scale) + 0.5).floor().clamp(0, 255).to(torch.uint8)
        assert lr.shape == (3, hr.shape[1] // scale, hr.shape[2] // scale)
        assert torch.equal(lr, want_lr)


def test_other_image_formats_in_hr_folder(tmp_path):
    pixels = noise(20, 24, 0)
    for suffix in (".png", ".bmp", ".tif", ".webp"):
        kwargs = {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(pixels).save(tmp_path / f"a{suffix.replace('.', '_')}{suffix}", **kwargs)
    Image.fromarray(pixels).save(tmp_path / "b.jpg", quality=95)
    data = SRFolder(tmp_path, 2)
    assert len(data) == 5
    for name, _, hr in data:
        if name != "b":  # JPEG is lossy
            assert torch.equal(hr, torch.from_numpy(pixels).permute(2, 0, 1)), name


# Set5 ships in tests/data in the EDSR-PyTorch benchmark layout (one HR per image);
# Set14 comes from outside the repository in the SelfExSR layout (see tests/_data.py).
@pytest.mark.parametrize("name,count,layout", [param("Set5", 5, "edsr_benchmark"),
                                               param("Set14", 14, "selfexsr")])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_real_benchmarks(name, count, layout, scale):
    data = SRFolder(dataset_dir(name), scale)
    assert data.layout == layout and data.name == name and len(data) == count
    assert [p.name for p in data.pairs] == [f"img_{i:03d}" for i in range(1, count + 1)]
    _, lr, hr = data[0]
    assert hr.shape == (3, lr.shape[1] * scale, lr.shape[2] * scale)


@pytest.mark.data
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.skipif(external_dir("Set5") is None,
                    reason=f"no Set5 at {external_root() / 'Set5'} to compare the bundled copy with")
def test_bundled_set5_is_the_selfexsr_set5(scale):
    """The one HR per image in tests/data, cropped to the scale, and the LR beside it are
    pixel for pixel the per-scale SelfExSR files they were taken from."""
    bundled, original = SRFolder(dataset_dir("Set5"), scale), SRFolder(external_dir("Set5"), scale)
    assert original.layout == "selfexsr" and len(bundled) == len(original) == 5
    for (name, lr, hr), (name_o, lr_o, hr_o) in zip(bundled, original):
        assert name == name_o and torch.equal(lr, lr_o) and torch.equal(hr, hr_o), name


@needs("Set14")
def test_real_greyscale_image_comes_back_as_rgb():
    set14 = dataset_dir("Set14")
    assert Image.open(set14 / "image_SRF_2" / "img_003_SRF_2_HR.png").mode == "L"
    name, lr, hr = SRFolder(set14, 2)[2]
    assert name == "img_003" and hr.shape[0] == lr.shape[0] == 3
    assert torch.equal(hr[0], hr[1]) and torch.equal(hr[0], hr[2])


# --- decoding ---------------------------------------------------------------------------

def test_greyscale_rgba_palette_and_16bit_become_8bit_rgb(tmp_path):
    rgb = noise(9, 11, 1)
    grey = noise(9, 11, 2, channels=1)
    cases = {}
    save(tmp_path / "grey.png", grey)
    cases["grey.png"] = np.repeat(grey[:, :, None], 3, axis=2)
    Image.fromarray(np.dstack([rgb, noise(9, 11, 3, channels=1)])).save(tmp_path / "rgba.png")
    cases["rgba.png"] = rgb  # alpha dropped, colour untouched
    Image.fromarray(np.dstack([grey, grey])).convert("LA").save(tmp_path / "la.png")
    cases["la.png"] = np.repeat(grey[:, :, None], 3, axis=2)
    palette_img = Image.fromarray(rgb).quantize(16)
    palette_img.save(tmp_path / "palette.png")
    cases["palette.png"] = np.asarray(palette_img.convert("RGB"))
    wide = np.random.default_rng(4).integers(0, 65536, (9, 11)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    cases["grey16.png"] = np.repeat(np.round(wide / 257).astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(grey).convert("1").save(tmp_path / "bilevel.png")
    bits = np.asarray(Image.open(tmp_path / "bilevel.png"))
    cases["bilevel.png"] = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)

    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    for file, want in cases.items():
        img = read_image(tmp_path / file)
        assert img.dtype == torch.uint8 and img.shape == (3, 9, 11), file
        assert np.array_equal(img.permute(1, 2, 0).numpy(), want), file


def test_write_png_round_trip_and_atomic(tmp_path):
    img = torch.from_numpy(noise(7, 5, 0)).permute(2, 0, 1)
    path = write_png(tmp_path / "deep" / "out.png", img)
    assert torch.equal(read_image(path), img)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp file left
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "f.png", img.float())
    with pytest.raises(ValueError, match="3, H, W"):
        write_png(tmp_path / "f.png", img[:2])


# --- bad input --------------------------------------------------------------------------

def truncated_png(path: Path) -> Path:
    save(path, noise(64, 64, 5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "not_an_image", "empty_file"])
def test_unreadable_images(tmp_path, kind):
    path = tmp_path / "bad.png"
    if kind == "corrupt":
        save(path, noise(16, 16, 6))
        data = bytearray(path.read_bytes())
        data[60:90] = bytes(30)  # inside the image data: checksum and inflate both break
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        truncated_png(path)
    elif kind == "not_an_image":
        path.write_text("this is a text file wearing a .png name\n" * 20)
    else:
        path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"cannot read image .*bad\.png"):
        read_image(path)


def test_missing_image_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_unreadable_image_in_a_folder_is_an_error_or_skipped(tmp_path):
    root = tmp_path / "MySet"
    make_set(root, "edsr_benchmark", scales=(2,))
    truncated_png(root / "HR" / "car.png")
    block = block_mean(noise(64, 64, 5), 2)
    save(root / "LR_bicubic" / "X2" / "carx2.png", block)  # keep sizes consistent with the HR
    with pytest.raises(ImageReadError, match=r"car\.png"):
        list(SRFolder(root, 2))
    with pytest.warns(UserWarning, match=r"skipping car: cannot read image .*car\.png"):
        data = SRFolder(root, 2, skip_unreadable=True)
    assert [name for name, _, _ in data] == ["bird", "dog"]


def test_non_image_in_a_folder_fails_when_the_folder_is_opened(tmp_path):
    root = tmp_path / "MySet"
    make_set(root, "basicsr", scales=(2,))
    (root / "LRbicx2" / "dog.png").write_text("not a png")
    with pytest.raises(ImageReadError, match=r"LRbicx2.dog\.png"):
        SRFolder(root, 2)
    with pytest.warns(UserWarning, match=r"dog\.png"):
        assert len(SRFolder(root, 2, skip_unreadable=True)) == 2


def test_lr_of_the_wrong_size(tmp_path):
    root = tmp_path / "MySet"
    make_set(root, "selfexsr", scales=(4,))
    save(root / "image_SRF_4" / "car_SRF_4_LR.png", noise(7, 9, 0))
    with pytest.raises(DatasetError, match=r"LR image .*car_SRF_4_LR\.png is 9x7 \(WxH\) but HR image "
                                           r".*car_SRF_4_HR\.png is 41x26, so x4 LR must be 10x6"):
        SRFolder(root, 4)


def test_missing_lr(tmp_path):
    root = tmp_path / "MySet"
    make_set(root, "div2k", scales=(2,))
    (root / "DIV2K_train_LR_bicubic" / "X2" / "dogx2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 HR image\(s\) in .*DIV2K_train_HR have no LR image in "
                                           r".*X2: dog\.png"):
        find_pairs(root, 2)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="is empty"):
        SRFolder(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SRFolder(tmp_path / "nowhere", 2)
    (tmp_path / "HR").mkdir()
    with pytest.raises(DatasetError, match=r"HR is empty"):
        SRFolder(tmp_path / "HR", 2)
    (tmp_path / "LR_bicubic" / "X2").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no HR images \(\.png, .*\) in .*HR"):
        SRFolder(tmp_path, 2)  # the layout is there, the images are not


def test_folder_in_no_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"matches no known dataset layout; looked for DIV2K_train_HR.*"
                                           r"LR_bicubic.*LRbicx<s>.*image_SRF_<s>.*hr_folder"):
        SRFolder(tmp_path, 2)


def test_wrong_or_unknown_layout_name(tmp_path):
    make_set(tmp_path, "hr_folder", scales=(2,))
    with pytest.raises(ValueError, match="unknown layout 'edsr'; choose 'auto' or one of"):
        find_pairs(tmp_path, 2, layout="edsr")
    with pytest.raises(DatasetError, match=r"is not in the basicsr layout; expected GTmod12/"):
        find_pairs(tmp_path, 2, layout="basicsr")


@pytest.mark.parametrize("layout,folder", [("selfexsr", "image_SRF_4"), ("edsr_benchmark", "X4"),
                                           ("basicsr", "LRbicx4"), ("div2k", "X4")])
def test_missing_scale(tmp_path, layout, folder):
    make_set(tmp_path / "MySet", layout, scales=(2, 3))
    with pytest.raises(DatasetError, match=rf"no x4 data \(no .*{folder}\); scales present: x2, x3"):
        SRFolder(tmp_path / "MySet", 4)


def test_bad_scale(tmp_path):
    make_set(tmp_path, "hr_folder", scales=(2,))
    for scale in (0, 2.0, True):
        with pytest.raises(ValueError, match="scale must be a positive integer"):
            find_pairs(tmp_path, scale)


def test_image_smaller_than_the_scale(tmp_path):
    save(tmp_path / "tiny.png", noise(3, 9, 0))
    with pytest.raises(DatasetError, match=r"tiny\.png \(9x3\) is smaller than the scale x4"):
        SRFolder(tmp_path, 4)


def test_opening_a_folder_reads_headers_only(tmp_path, monkeypatch):
    import csd_fast.data.datasets as datasets

    make_set(tmp_path, "selfexsr", scales=(2,))
    decoded = []
    monkeypatch.setattr(datasets, "read_image", lambda p: decoded.append(p) or read_image(p))
    data = SRFolder(tmp_path, 2)
    assert decoded == []
    data[1]
    assert [p.name for p in decoded] == ["car_SRF_2_HR.png", "car_SRF_2_LR.png"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_hr_folder_reproduces_the_published_lr_files(tmp_path, scale):
    """An HR-only folder of Set5 yields exactly the MATLAB-made LR shipped beside it
    (at x3 after cropping the HR to a multiple of 3)."""
    import shutil

    set5 = dataset_dir("Set5")
    shipped = sorted((set5 / "HR").glob("*.png"))
    for hr in shipped:
        shutil.copy(hr, tmp_path / hr.name)
    folder = SRFolder(tmp_path, scale, layout="hr_folder")
    assert len(folder) == len(shipped) == 5
    for (name, lr, _), hr in zip(folder, shipped):
        assert torch.equal(lr, read_image(set5 / "LR_bicubic" / f"X{scale}" / f"{hr.stem}x{scale}.png")), name
