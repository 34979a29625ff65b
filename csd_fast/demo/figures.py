"""The side-by-side figure of the demo's held-out crops (PIL only)."""
from __future__ import annotations

from pathlib import Path


def _label(img, text: str):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    box = draw.textbbox((3, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return img


def side_by_side(rows: list[dict], columns: list[str], path: Path, crop: int, zoom: int = 2) -> None:
    """One row per image, one zoomed crop per column; row = {"image", "crops", "psnr"} with a
    PSNR (or None) per crop."""
    from PIL import Image

    side = crop * zoom
    n = len(columns)
    sheet = Image.new("RGB", (n * side + (n + 1) * 4, len(rows) * (side + 4) + 4), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, (crop_pixels, name) in enumerate(zip(row["crops"], columns)):
            im = Image.fromarray(crop_pixels.permute(1, 2, 0).numpy())
            im = im.resize((side, side), Image.NEAREST)  # nearest: show the pixels as they are
            psnr = row["psnr"][j]
            _label(im, f"{row['image']} {name}" + (f" {psnr:.2f}dB" if psnr is not None else ""))
            sheet.paste(im, (4 + j * (side + 4), 4 + i * (side + 4)))
    sheet.save(path)
