"""Upscaling image files with any checkpoint: 8- and 16-bit PNGs keep their bit depth,
alpha is carried over by bicubic upscaling, greyscale stays greyscale."""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image

from ._atomic import atomic_write_bytes
from ._outputs import check_folder, check_outputs
from .archs import EDSRCSD
from .data import IMAGE_SUFFIXES, imresize
from .inference import upscale


class UnreadableImage(ValueError):
    pass


def _unreadable(path: Path, err: BaseException) -> UnreadableImage:
    # pypng's messages already start with their class name ("FormatError: ..."); don't repeat it
    detail, kind = str(err), type(err).__name__
    if not detail.startswith(kind):
        detail = f"{kind}: {detail}"
    return UnreadableImage(f"{path}: not a readable image ({detail})")


@dataclass
class Picture:
    color: torch.Tensor  # (C, H, W) float64 in [0, 1], C = 1 (grey) or 3
    alpha: torch.Tensor | None  # (1, H, W) float64 in [0, 1]
    bitdepth: int  # 8 or 16


def read_picture(path: Path) -> Picture:
    """An image file as float channels in [0, 1], keeping what writing it back needs."""
    try:
        if path.suffix.lower() == ".png":
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            pixels = np.vstack([np.asarray(row, dtype=np.float64) for row in rows])
            planes, bitdepth = info["planes"], info["bitdepth"]
            pixels = pixels.reshape(height, width, planes) / (2**bitdepth - 1)
            bitdepth = 16 if bitdepth > 8 else 8
        else:
            with Image.open(path) as im:
                im.load()
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                pixels = np.asarray(im, dtype=np.float64) / 255
            planes, bitdepth = pixels.shape[2], 8
    except Exception as err:  # PIL and pypng raise many types for broken files
        raise _unreadable(path, err) from err
    data = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    has_alpha = planes in (2, 4)
    color = data[:-1] if has_alpha else data
    return Picture(color, data[-1:] if has_alpha else None, bitdepth)


def check_readable(path: Path) -> None:
    """Raise UnreadableImage unless path reads, before any work starts. A PNG's chunks are
    walked by pypng, read_picture's reader, which checks every chunk's CRC (catching damaged
    and truncated pixel data without decoding it); other formats are decoded by PIL, in C."""
    try:
        if path.suffix.lower() == ".png":
            for _ in png.Reader(filename=str(path)).chunks():
                pass
        else:
            with Image.open(path) as im:
                im.load()
    except Exception as err:  # as in read_picture
        raise _unreadable(path, err) from err


def write_picture(path: Path, picture: Picture) -> None:
    """PNG at the picture's bit depth, written atomically."""
    top = 2**picture.bitdepth - 1
    data = picture.color if picture.alpha is None else torch.cat([picture.color, picture.alpha])
    pixels = quantize(data, top).permute(1, 2, 0).numpy()
    height, width, planes = pixels.shape
    writer = png.Writer(width, height, greyscale=planes in (1, 2), alpha=picture.alpha is not None,
                        bitdepth=picture.bitdepth)
    encoded = io.BytesIO()
    writer.write(encoded, pixels.reshape(height, width * planes).astype(np.uint16 if top > 255 else np.uint8))
    atomic_write_bytes(path, encoded.getvalue())


def quantize(data: torch.Tensor, top: int) -> torch.Tensor:
    """Channels in [0, 1] (clamped) as integers 0..top, rounded to nearest."""
    return (data.clamp(0, 1) * top).round().to(torch.int64)


def upscale_rgb(model: EDSRCSD, rgb: torch.Tensor, width: float, device: torch.device,
                **options) -> torch.Tensor:
    """SR of float64 RGB (N, 3, H, W) in [0, 1]: float64 on the CPU, unclamped. The one
    conversion to and from the model's range, for images and video frames alike."""
    x = model.to_model_range(rgb.to(device, torch.float32), peak=1.0)
    return model.from_model_range(upscale(model, x, width, **options).double().cpu(), peak=1.0)


def upscale_picture(model: EDSRCSD, picture: Picture, width: float, device: torch.device,
                    **options) -> Picture:
    grey = picture.color.size(0) == 1
    rgb = picture.color.expand(3, -1, -1) if grey else picture.color
    sr = upscale_rgb(model, rgb.unsqueeze(0), width, device, **options)[0]
    if grey:
        sr = sr.mean(0, keepdim=True)
    alpha = None
    if picture.alpha is not None:
        alpha = imresize(picture.alpha, model.scale).clamp(0, 1)
    return Picture(sr.clamp(0, 1), alpha, picture.bitdepth)


def png_name(path: Path) -> str:
    return f"{path.stem}.png"


def collect_inputs(inputs: list[str], suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                   output_name: Callable[[Path], str] = png_name) -> list[Path]:
    """Files named directly, or found (not recursively) in the folders named by their suffixes;
    refused when two would be written under one output_name."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                kinds = "images" if suffixes == IMAGE_SUFFIXES else "images or videos"
                raise ValueError(f"{path}: no {kinds} ({', '.join(suffixes)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    names = {}
    for f in files:
        name = output_name(f)
        if name in names:
            raise ValueError(f"{names[name]} and {f} would both be written as {name}")
        names[name] = f
    return files


def plan_outputs(files: list[Path], folder: Path, overwrite: bool = False,
                 checkpoint: Path | None = None,
                 output_name: Callable[[Path], str] = png_name) -> list[tuple[Path, Path]]:
    """(input, output) pairs, refused before any work when an output would replace an input
    or the checkpoint (however named) or, without overwrite, any other existing file."""
    check_folder("-o", folder)
    plan = [(f, folder / output_name(f)) for f in files]
    inputs = [("the input image", f) for f in files] + [("the checkpoint", checkpoint)]
    check_outputs([("-o", out) for _, out in plan], inputs, overwrite=overwrite)
    return plan
