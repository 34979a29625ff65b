"""PSNR and SSIM as the SR literature reports them (MATLAB conventions).

Images are (3, H, W) RGB on the [0, 255] scale. The defaults follow the standard
protocol: SR output quantised to uint8, Y channel of MATLAB's rgb2ycbcr, ``crop`` pixels
removed from every border, all arithmetic in float64.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr's Y row, for RGB in [0, 1]
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Y of MATLAB's rgb2ycbcr for RGB in [0, 255], unrounded: (..., 3, H, W) -> (..., H, W)."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(img).__name__}")
    if img.dim() < 3 or img.size(-3) != 3:
        raise ValueError(f"expected an RGB image (..., 3, H, W), got shape {tuple(img.shape)}")
    if not img.is_floating_point():
        img = img.double()
    r, g, b = img.unbind(-3)
    return 16 + (Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b) / 255


def quantize_uint8(img: torch.Tensor) -> torch.Tensor:
    """Round to uint8 levels (half away from zero, as MATLAB's uint8()) and saturate."""
    return torch.floor(img.double() + 0.5).clamp(0, 255)


def _prepare(sr: torch.Tensor, hr: torch.Tensor, crop: int, y_channel: bool, do_quantize: bool,
             min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated, cropped float64 planes (N, C, H, W) of a pair of batches (N, 3, H, W)."""
    for name, t in (("sr", sr), ("hr", hr)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4 or t.size(1) != 3:
            raise ValueError(f"{name} must be a batch of RGB images (N, 3, H, W), got shape {tuple(t.shape)}")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr differ in shape: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    try:
        crop = operator.index(crop)
    except TypeError:
        raise ValueError(f"crop must be a non-negative int, got {crop!r}") from None
    if crop < 0:
        raise ValueError(f"crop must be a non-negative int, got {crop!r}")
    h, w = hr.shape[-2:]
    if h - 2 * crop < min_size or w - 2 * crop < min_size:
        raise ValueError(f"crop={crop} leaves less than {min_size}x{min_size} pixels of a {h}x{w} image")
    sr = quantize_uint8(sr) if do_quantize else sr.double()
    hr = hr.to(sr.device, torch.float64)
    if y_channel:
        sr, hr = rgb_to_y(sr).unsqueeze(1), rgb_to_y(hr).unsqueeze(1)
    if crop:
        sr, hr = sr[..., crop:-crop, crop:-crop], hr[..., crop:-crop, crop:-crop]
    return sr, hr


def batch_psnr(sr: torch.Tensor, hr: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
               quantize: bool = True) -> torch.Tensor:
    """PSNR (dB, float64) of each pair in batches (N, 3, H, W); inf where identical.

    On RGB the mean squared error is taken over all three channels (the DIV2K convention).
    """
    sr, hr = _prepare(sr, hr, crop, y_channel, quantize)
    mse = (sr - hr).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse)  # mse == 0 gives inf, as intended


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The normalised 2-D Gaussian (outer product of g) over (M, 1, H, W), 'valid' region only."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def batch_ssim(sr: torch.Tensor, hr: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
               quantize: bool = True) -> torch.Tensor:
    """SSIM (float64) of each pair in batches (N, 3, H, W); on RGB, the mean over channels."""
    sr, hr = _prepare(sr, hr, crop, y_channel, quantize, min_size=SSIM_WINDOW)
    n, c = sr.shape[:2]
    g = _gaussian_window(sr.device)
    # One conv pass over the five statistics of every plane.
    planes = torch.stack([sr, hr, sr * sr, hr * hr, sr * hr], 2).flatten(0, 2).unsqueeze(1)
    mu_x, mu_y, xx, yy, xy = _blur_valid(planes, g).view(n, c, 5, -1).unbind(2)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean(-1).mean(1)


def _single(name: str, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for arg, t in (("sr", sr), ("hr", hr)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.size(0) != 3:
            raise ValueError(f"{name}: {arg} must be one RGB image (3, H, W), got shape {tuple(t.shape)}")
    return sr.unsqueeze(0), hr.unsqueeze(0)


def psnr(sr: torch.Tensor, hr: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
         quantize: bool = True) -> float:
    """PSNR in dB of one SR image against its HR, both (3, H, W) in [0, 255]; inf if equal."""
    sr, hr = _single("psnr", sr, hr)
    return float(batch_psnr(sr, hr, crop=crop, y_channel=y_channel, quantize=quantize)[0])


def ssim(sr: torch.Tensor, hr: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
         quantize: bool = True) -> float:
    """SSIM of one SR image against its HR, both (3, H, W) in [0, 255]."""
    sr, hr = _single("ssim", sr, hr)
    return float(batch_ssim(sr, hr, crop=crop, y_channel=y_channel, quantize=quantize)[0])


__all__ = ["batch_psnr", "batch_ssim", "psnr", "quantize_uint8", "rgb_to_y", "ssim"]
