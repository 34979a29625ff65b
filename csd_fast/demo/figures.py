"""The demo's side-by-side figure (PIL only): for each held-out photo, its most detailed
region as every method upscaled it, enlarged so that the differences show."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from .._atomic import atomic_write_bytes

if TYPE_CHECKING:
    import torch

PAD = 8
INK, MARK = (0, 0, 0), (255, 235, 0)


def detailed_region(hr: torch.Tensor, side: int, margin: int) -> tuple[int, int]:
    """Top-left (y, x) of the side x side window of hr (3, H, W) with the most detail: the
    largest sum of squared luma differences between neighbouring pixels, the window at least
    margin pixels from every edge (inside the border the PSNR protocol crops)."""
    import torch

    from ..metrics.psnr_ssim import rgb_to_y

    luma = rgb_to_y(hr.double())
    energy = torch.zeros_like(luma)
    energy[:-1, :] += (luma[1:, :] - luma[:-1, :]) ** 2
    energy[:, :-1] += (luma[:, 1:] - luma[:, :-1]) ** 2
    # summed-area table: each window's sum in four lookups
    table = torch.nn.functional.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    h, w = luma.shape
    if min(h, w) < side + 2 * margin:
        raise ValueError(f"no {side}x{side} window {margin} pixels inside a {h}x{w} image")
    ys = torch.arange(margin, h - margin - side + 1)
    xs = torch.arange(margin, w - margin - side + 1)
    y0, x0 = ys[:, None], xs[None, :]
    sums = table[y0 + side, x0 + side] - table[y0, x0 + side] - table[y0 + side, x0] + table[y0, x0]
    best = int(sums.argmax())  # the first of equal windows: top-most, then left-most
    return int(ys[best // len(xs)]), int(xs[best % len(xs)])


def _to_pil(pixels: torch.Tensor):
    from PIL import Image

    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


def _centred(draw, box: tuple[int, int, int, int], text: str, font) -> None:
    """text centred in the box (x0, y0, x1, y1)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (box[0] + box[2] - (right - left)) // 2
    y = (box[1] + box[3] - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=INK, font=font)


def _thumbnail(hr: torch.Tensor, region: tuple[int, int, int], size: int):
    """hr shrunk to fit size x size, with the region (y, x, side) outlined."""
    from PIL import Image, ImageDraw

    im = _to_pil(hr)
    f = min(size / im.width, size / im.height)
    im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC)
    y, x, side = region
    box = (x * f, y * f, (x + side) * f - 1, (y + side) * f - 1)
    draw = ImageDraw.Draw(im)  # a bright box inside a dark one: visible on any colour
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), outline=(0, 0, 0), width=1)
    draw.rectangle(box, outline=MARK, width=2)
    return im


def side_by_side(rows: list[dict], columns: list[str], path: Path, zoom: int, caption: list[str]) -> None:
    """One row per image: a thumbnail marking the region, then the region as each column's
    method gave it, enlarged zoom times with nearest-neighbour pixels (the pixels as they
    are), its PSNR below. row = {"image", "hr", "region": (y, x, side), "crops": one per
    column, "psnr": one per column, None where there is none (HR)}."""
    from PIL import Image, ImageDraw

    from ..train.curves import text_font

    text, small = text_font(15), text_font(13)
    panel = max(row["region"][2] for row in rows) * zoom
    n = len(columns) + 1
    line = 20
    top = PAD + line * len(caption) + PAD + line  # caption, gap, column titles
    row_height = panel + line + PAD
    sheet = Image.new("RGB", (n * panel + (n + 1) * PAD, top + len(rows) * row_height + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, sentence in enumerate(caption):
        draw.text((PAD, PAD + line * i), sentence, fill=INK, font=small)
    x_of = [PAD + j * (panel + PAD) for j in range(n)]
    for x, name in zip(x_of, ["where", *columns]):
        _centred(draw, (x, top - line, x + panel, top), name, text)
    for i, row in enumerate(rows):
        y = top + i * row_height
        thumb = _thumbnail(row["hr"], row["region"], panel)
        sheet.paste(thumb, (x_of[0] + (panel - thumb.width) // 2, y + (panel - thumb.height) // 2))
        _centred(draw, (x_of[0], y + panel, x_of[0] + panel, y + panel + line), row["image"], small)
        for x, crop, psnr in zip(x_of[1:], row["crops"], row["psnr"]):
            side = crop.shape[1]
            sheet.paste(_to_pil(crop).resize((side * zoom, side * zoom), Image.NEAREST), (x, y))
            label = "reference" if psnr is None else f"{psnr:.2f} dB"
            _centred(draw, (x, y + panel, x + panel, y + panel + line), label, small)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
