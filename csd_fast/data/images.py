"""Reading any common image file as 8-bit RGB, and writing PNGs atomically."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._atomic import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

FLOAT_PIXELS = "floating-point pixels have no agreed range; convert to 8 or 16 bit first"
# Modes that PIL's own convert("RGB") would clip instead of rescale.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageReadError(ValueError):
    """An image file that is missing, not an image, corrupt or truncated."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: no such file")
    try:
        return Image.open(path)
    except Exception as err:  # PIL raises several unrelated types for bad headers
        raise ImageReadError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    path = Path(path)
    with _open(path) as im:
        return im.height, im.width


def check_image(path: str | os.PathLike) -> None:
    """Raise ImageReadError unless read_image(path) would succeed, decoding as little as the
    format allows: a PNG's chunks are read and each checksum compared (which finds truncated
    and damaged pixel data without inflating it); other formats, which carry no checksum, are
    decoded."""
    path = Path(path)
    with _open(path) as im:
        if im.mode == "F":
            raise ImageReadError(f"cannot read image {path}: {FLOAT_PIXELS}")
        try:
            im.verify() if im.format == "PNG" else im.load()
        except Exception as err:
            raise ImageReadError(f"cannot read image {path}: damaged or truncated "
                                 f"({type(err).__name__}: {err})") from err


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in _WIDE_MODES:
        # 16-bit greyscale: rescale like MATLAB's im2uint8 (v / 257, rounded).
        wide = np.asarray(im, dtype=np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ValueError(FLOAT_PIXELS)
    # RGBA/LA/PA: alpha is dropped, not composited, as SR evaluation expects.
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file fully into a uint8 (3, H, W) RGB tensor.

    Greyscale, palette, alpha and 16-bit images become 8-bit RGB. A missing, non-image,
    corrupt or truncated file raises ImageReadError naming the file (truncation is caught
    while PIL.ImageFile.LOAD_TRUNCATED_IMAGES keeps its default, False).
    """
    path = Path(path)
    with _open(path) as im:
        try:
            im.load()  # decode now, so truncation surfaces here and not later
            pixels = _to_rgb_array(im)
        except Exception as err:
            raise ImageReadError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def write_png(path: str | os.PathLike, image: torch.Tensor) -> Path:
    """Write a uint8 (3, H, W) or (1, H, W) tensor as PNG; a reader never sees half a file."""
    path = Path(path)
    if image.dtype != torch.uint8:
        raise TypeError(f"write_png needs a uint8 tensor, got {image.dtype}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"write_png needs a (3, H, W) or (1, H, W) tensor, got {tuple(image.shape)}")
    pixels = image.detach().cpu().permute(1, 2, 0).numpy()
    pil = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    encoded = io.BytesIO()
    pil.save(encoded, format="PNG")
    return atomic_write_bytes(path, encoded.getvalue())
