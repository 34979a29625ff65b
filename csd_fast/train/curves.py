"""Training curves as a PNG, drawn with PIL alone: loss and validation PSNR against iteration.

The trainer writes one for every run (<out>/curves.png, from its log.csv); the demo draws its
teacher and CSD runs one after the other in a single figure.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

from .._atomic import atomic_write_bytes

TEACHER_COLOUR, STUDENT_COLOUR = (200, 60, 20), (20, 90, 200)
# Which log.csv columns hold the width-1 model's curves and the student's, per stage: the
# teacher stage trains width 1 through the "student" output; the student stage has no teacher.
TEACHER_KEYS = {"teacher": ("l1_student", "val_psnr_teacher"), "csd": ("l1_teacher", "val_psnr_teacher")}
STUDENT_KEYS = {"csd": ("l1_student", "val_psnr_student"), "student": ("l1_student", "val_psnr_student")}
PANEL_PITCH = 270  # 210 px of chart, its title above and axis labels below

Points = list[tuple[float, float]]


def read_log(path: str | os.PathLike) -> list[dict]:
    """The rows of a trainer's log.csv (or of the run folder holding it), as strings."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _points(rows: list[dict], key: str | None, offset: int) -> Points:
    """(offset + iteration, value) for the rows that have a finite value in key."""
    out = []
    for r in rows if key else ():
        value = r.get(key)
        if value in (None, ""):
            continue
        y = float(value)
        if math.isfinite(y):  # an inf PSNR (a perfect image) cannot be placed on an axis
            out.append((offset + int(r["iteration"]), y))
    return out


def _panel(draw, box, title: str, series: list[tuple[str, tuple, Points]], x_max: float,
           marks: list[float], x_end: str | None = None) -> None:
    """A line chart in box (x0, y0, x1, y1): axes, min/max labels, one legend line per series.
    x_end labels the right end of the x axis (default: x_max iterations)."""
    x0, y0, x1, y1 = box
    series = [s for s in series if s[2]]
    pts = [p for _, _, s in series for p in s]
    draw.text((x0, y0 - 28), title, fill=(0, 0, 0))
    draw.rectangle(box, outline=(0, 0, 0))
    if not pts:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(0, 0, 0))
        return
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    fx = lambda x: x0 + (x1 - x0) * x / max(x_max, 1)  # noqa: E731
    fy = lambda y: y1 - (y1 - y0) * (y - lo) / (hi - lo)  # noqa: E731
    for m in marks:  # stage boundary
        draw.line((fx(m), y0, fx(m), y1), fill=(180, 180, 180))
    for k, (name, colour, s) in enumerate(series):
        xy = [(fx(x), fy(y)) for x, y in s]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((x0 + 8, y0 + 6 + 12 * k), name, fill=colour)
    draw.text((x1 + 4, y0), f"{hi:.4g}", fill=(0, 0, 0))
    draw.text((x1 + 4, y1 - 10), f"{lo:.4g}", fill=(0, 0, 0))
    draw.text((x0, y1 + 4), "0", fill=(0, 0, 0))
    draw.text((x1 - 60, y1 + 4), x_end or f"{int(x_max)} it", fill=(0, 0, 0))


def training_curves(runs: Sequence[tuple[str, list[dict]]], path: str | os.PathLike, width: float,
                    psnr_title: str = "validation PSNR, Y channel") -> Path:
    """Write a PNG of the L1 losses, the contrastive term (when logged) and validation PSNR.

    runs: (stage, log rows) pairs, drawn one after the other along x (teacher then csd, say)
    with grey lines at the boundaries; one pair for a single run. Rows may lack any value
    (no validation yet, a stage without a teacher): those curves are left out.
    """
    from PIL import Image, ImageDraw

    teacher: dict[str, Points] = {"l1": [], "psnr": []}
    student: dict[str, Points] = {"l1": [], "psnr": []}
    contrastive: Points = []
    total, marks = 0, []
    for stage, rows in runs:
        for keys, out in ((TEACHER_KEYS.get(stage), teacher), (STUDENT_KEYS.get(stage), student)):
            if keys:
                out["l1"] += _points(rows, keys[0], total)
                out["psnr"] += _points(rows, keys[1], total)
        contrastive += _points(rows, "contrastive", total)
        total += max((int(r["iteration"]) for r in rows), default=0)
        marks.append(total)
    marks.pop()  # the end of the last run is the right edge, not a boundary

    names = ("teacher (width 1)", f"student (width {width:g})")
    def both(key: str) -> list:
        return [(names[0], TEACHER_COLOUR, teacher[key]), (names[1], STUDENT_COLOUR, student[key])]

    boundary = "; grey lines: " + " -> ".join(s for s, _ in runs) if marks else ""
    # L1 terms rather than the total: the contrastive term (x lambda_c) would dwarf them
    panels = [("training L1 loss (pixel values 0-255)" + boundary, both("l1"))]
    if contrastive:
        panels.append(("contrastive term: sum over VGG layers of w * d(T,S) / d(S,negatives)",
                       [(names[1], STUDENT_COLOUR, contrastive)]))
    panels.append((psnr_title, both("psnr")))

    img = Image.new("RGB", (720, 20 + PANEL_PITCH * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (title, series) in enumerate(panels):
        top = 40 + PANEL_PITCH * i
        _panel(draw, (50, top, 660, top + 210), title, series, total, marks)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return atomic_write_bytes(path, buf.getvalue())
