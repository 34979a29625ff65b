"""csd_fast.metrics: Y conversion, PSNR and SSIM by hand, and the bicubic baseline on Set5."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csd_fast.data.imresize import imresize
from csd_fast.metrics import batch_psnr, batch_ssim, psnr, quantize_uint8, rgb_to_y, ssim


def benchmark_data() -> Path:
    """Set5/Set14 root: $CSD_FAST_BENCHMARK_DATA, else shared/ beside the repository."""
    env = os.environ.get("CSD_FAST_BENCHMARK_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


def load_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def rand_image(seed: int, h: int = 24, w: int = 20) -> torch.Tensor:
    return torch.rand(3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 255


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two float64 planes, one 11x11 Gaussian window position at a time."""
    r = np.arange(11) - 5.0
    window = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (window * a).sum(), (window * b).sum()
            va, vb = (window * (a - ma) ** 2).sum(), (window * (b - mb) ** 2).sum()
            cov = (window * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_rgb_to_y_by_hand():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [51, 102, 204]],
                           dtype=torch.float64)
    y = rgb_to_y(colours.T.reshape(3, 1, 6))[0]
    want = [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + 0.2 * 65.481 + 0.4 * 128.553 + 0.8 * 24.966]
    torch.testing.assert_close(y, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert rgb_to_y(torch.zeros(2, 5, 3, 4, 4, dtype=torch.uint8)).shape == (2, 5, 4, 4)
    with pytest.raises(ValueError):
        rgb_to_y(torch.zeros(4, 4, 4))


def test_psnr_of_known_mse():
    hr = torch.full((3, 16, 16), 100.0)
    sr = hr + 5
    assert psnr(sr, hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-10)
    dy = 5 * 219 / 255  # an equal shift of R, G and B moves Y by (65.481 + 128.553 + 24.966) / 255 of it
    assert psnr(sr, hr) == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2), abs=1e-10)
    sr = hr.clone()
    sr[0] += 6  # RGB: MSE over all three channels (DIV2K convention) = 36 / 3
    assert psnr(sr, hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / 12), abs=1e-10)


def test_identical_images():
    img = rand_image(0).round()
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_crop_removes_the_border():
    hr = rand_image(1).round()
    sr = hr.clone()
    sr[:, :2] = 0
    sr[:, :, -2:] = 255
    assert psnr(sr, hr, crop=1) < 40
    assert psnr(sr, hr, crop=2) == math.inf
    assert ssim(sr, hr, crop=2) == pytest.approx(1.0, abs=1e-12)


def test_quantize():
    hr = rand_image(2).round()
    assert psnr(hr + 0.4, hr) == math.inf
    assert psnr(hr + 0.4, hr, quantize=False) < 60
    # Half levels round up, as MATLAB's uint8() does; values saturate at 0 and 255.
    q = quantize_uint8(torch.tensor([-3.0, 0.5, 1.5, 2.5, 254.49, 300.0]))
    assert q.tolist() == [0, 1, 2, 3, 254, 255]
    assert psnr(torch.full((3, 4, 4), 300.0), torch.full((3, 4, 4), 255.0)) == math.inf


def test_uint8_inputs():
    hr = rand_image(3).round()
    sr = (hr + torch.randn(hr.shape, generator=torch.Generator().manual_seed(4)) * 4).clamp(0, 255).round()
    assert psnr(sr.to(torch.uint8), hr.to(torch.uint8), crop=2) == pytest.approx(psnr(sr, hr, crop=2), abs=1e-12)
    assert ssim(sr.to(torch.uint8), hr.to(torch.uint8), crop=2) == pytest.approx(ssim(sr, hr, crop=2), abs=1e-12)


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_matches_straightforward_implementation(crop):
    hr = rand_image(5)
    sr = (hr * 0.7 + rand_image(6) * 0.3).round()
    c = slice(crop, hr.shape[-2] - crop), slice(crop, hr.shape[-1] - crop)
    want_y = reference_ssim(rgb_to_y(sr)[c].numpy(), rgb_to_y(hr)[c].numpy())
    assert ssim(sr, hr, crop=crop) == pytest.approx(want_y, abs=1e-12)
    want_rgb = np.mean([reference_ssim(sr[k][c].numpy(), hr[k][c].numpy()) for k in range(3)])
    assert ssim(sr, hr, crop=crop, y_channel=False) == pytest.approx(want_rgb, abs=1e-12)


def test_batched_variants_match_single_images():
    hr = torch.stack([rand_image(i) for i in range(3)])
    sr = torch.stack([rand_image(10 + i) for i in range(3)])
    got_p, got_s = batch_psnr(sr, hr, crop=2), batch_ssim(sr, hr, crop=2)
    for i in range(3):
        assert got_p[i].item() == pytest.approx(psnr(sr[i], hr[i], crop=2), abs=1e-12)
        assert got_s[i].item() == pytest.approx(ssim(sr[i], hr[i], crop=2), abs=1e-12)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_errors(metric):
    img = rand_image(0)
    with pytest.raises(ValueError, match="shape"):
        metric(img, img[:, :-1])
    with pytest.raises(ValueError):
        metric(img[:2], img[:2])  # two channels
    with pytest.raises(ValueError):
        metric(img[None], img[None])  # a batch is not one image
    with pytest.raises(ValueError):
        metric(img[0], img[0])
    with pytest.raises(ValueError, match="crop"):
        metric(img, img, crop=10)
    with pytest.raises(ValueError, match="crop"):
        metric(img, img, crop=-1)
    with pytest.raises(TypeError):
        metric(img.numpy(), img)
    if metric is ssim:  # 11x11 window needs 11x11 pixels left after cropping
        with pytest.raises(ValueError, match="crop"):
            metric(img, img, crop=5)


def bicubic_baseline(scale: int, lr_dtype: torch.dtype) -> tuple[float, float]:
    folder = benchmark_data() / "Set5" / f"image_SRF_{scale}"
    if not folder.is_dir():
        pytest.skip(f"benchmark data not found at {folder} (set CSD_FAST_BENCHMARK_DATA)")
    scores = []
    for hr_path in sorted(folder.glob("*_HR.png")):
        hr = load_rgb(hr_path)
        lr = load_rgb(hr_path.with_name(hr_path.name.replace("_HR", "_LR"))).to(lr_dtype)
        sr = imresize(lr, scale)
        scores.append((psnr(sr, hr, crop=scale), ssim(sr, hr, crop=scale)))
    assert len(scores) == 5
    return tuple(np.mean(scores, 0))


@pytest.mark.parametrize("lr_dtype", [torch.float64, torch.uint8], ids=["float64", "uint8"])
@pytest.mark.parametrize("scale, want_psnr, want_ssim", [(4, 28.43, 0.811), (2, 33.68, 0.930)])
def test_set5_bicubic_baseline(scale, want_psnr, want_ssim, lr_dtype):
    """The issue's acceptance numbers (published: x4 28.42 / .8104, x2 33.66 / .9299)."""
    got_psnr, got_ssim = bicubic_baseline(scale, lr_dtype)
    assert got_psnr == pytest.approx(want_psnr, abs=0.01)
    assert got_ssim == pytest.approx(want_ssim, abs=0.001)
