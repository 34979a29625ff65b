"""Training curves as a PNG, drawn with PIL alone: loss and validation PSNR against iteration.

The trainer writes one for every run (<out>/curves.png, from its log.csv); the demo draws its
teacher and CSD runs one after the other in a single figure, its student trained alone beside.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

from .._atomic import atomic_write_bytes

TEACHER_COLOUR, STUDENT_COLOUR, ALONE_COLOUR = (200, 60, 20), (20, 90, 200), (30, 140, 60)
BOUNDARY_COLOUR, GRID_COLOUR = (180, 180, 180), (232, 232, 232)
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


def text_font(size: int):
    """PIL's default font at size pixels where it scales (Pillow >= 10.1 with FreeType),
    else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], int]:
    """About count round values (steps of 1, 2, 2.5 or 5 times a power of ten) from a
    multiple at or below lo to one at or above hi, and the decimals their labels need."""
    span = max(hi - lo, 1e-12)
    power = 10.0 ** math.floor(math.log10(span / count))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power * count >= span)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / power, 6) == 2.5 else 0)
    return [k * step for k in range(first, last + 1)], decimals


def _panel(draw, box, title: str, series: list[tuple[str, tuple, Points]], x_max: float,
           marks: list[float], x_label: str | None = None) -> None:
    """A line chart in box (x0, y0, x1, y1): its title and legend above, y ticks with grid
    lines at round values, x ticks (iterations) below, one line per series; grey vertical
    lines at marks. x_label names the x axis under its ticks."""
    x0, y0, x1, y1 = box
    series = [s for s in series if s[2]]
    pts = [p for _, _, s in series for p in s]
    draw.text((x0, y0 - 30), title, fill=(0, 0, 0))
    if not pts:
        draw.rectangle(box, outline=(0, 0, 0))
        draw.text((x0 + 10, y0 + 10), "no data", fill=(0, 0, 0))
        return
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # a flat curve: centred in a range of 1
        lo, hi = lo - 0.5, hi + 0.5
    y_ticks, decimals = nice_ticks(lo, hi)
    lo, hi = y_ticks[0], y_ticks[-1]
    fx = lambda x: x0 + (x1 - x0) * x / max(x_max, 1)  # noqa: E731
    fy = lambda y: y1 - (y1 - y0) * (y - lo) / (hi - lo)  # noqa: E731
    _axes(draw, box, fx, fy, (y_ticks, decimals), x_max, x_label)
    for m in marks:  # stage boundary
        draw.line((fx(m), y0, fx(m), y1), fill=BOUNDARY_COLOUR)
    legend_x = x0
    for name, colour, s in series:
        xy = [(fx(x), fy(y)) for x, y in s]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.line((legend_x, y0 - 9, legend_x + 16, y0 - 9), fill=colour, width=2)
        draw.text((legend_x + 20, y0 - 15), name, fill=colour)
        legend_x += 20 + draw.textlength(name) + 18
    draw.rectangle(box, outline=(0, 0, 0))


def _axes(draw, box, fx, fy, y_ticks: tuple[list[float], int], x_max: float, x_label: str | None) -> None:
    """Grid lines and labels at the y ticks (values, decimals), iteration ticks below the box."""
    x0, y0, x1, y1 = box
    values, decimals = y_ticks
    for y in values:
        draw.line((x0, fy(y), x1, fy(y)), fill=GRID_COLOUR)
        label = f"{y:.{decimals}f}"
        draw.text((x0 - 4 - draw.textlength(label), fy(y) - 6), label, fill=(0, 0, 0))
    x_ticks, x_decimals = nice_ticks(0, max(x_max, 1), 7)
    for x in (t for t in x_ticks if t <= x_max):
        label = f"{x:.{x_decimals}f}"
        draw.line((fx(x), y1, fx(x), y1 + 3), fill=(0, 0, 0))
        draw.text((fx(x) - draw.textlength(label) / 2, y1 + 5), label, fill=(0, 0, 0))
    if x_label:
        draw.text(((x0 + x1 - draw.textlength(x_label)) / 2, y1 + 18), x_label, fill=(0, 0, 0))


def _boundaries(stages: list[str]) -> str:
    """What the grey lines mark: the end of each stage but the last."""
    if len(stages) < 2:
        return ""
    if len(stages) == 2:
        return f"; grey line: end of the {stages[0]} stage"
    return f"; grey lines: ends of the {', '.join(stages[:-1])} stages"


def _chained(runs: Sequence[tuple[str, list[dict]]]) -> tuple[dict, dict, Points, list[int]]:
    """The width-1 and student {"l1", "psnr"} points and the contrastive points of runs drawn
    one after the other, and the iteration at which each run ends."""
    teacher: dict[str, Points] = {"l1": [], "psnr": []}
    student: dict[str, Points] = {"l1": [], "psnr": []}
    contrastive: Points = []
    ends = [0]
    for stage, rows in runs:
        for keys, out in ((TEACHER_KEYS.get(stage), teacher), (STUDENT_KEYS.get(stage), student)):
            if keys:
                out["l1"] += _points(rows, keys[0], ends[-1])
                out["psnr"] += _points(rows, keys[1], ends[-1])
        contrastive += _points(rows, "contrastive", ends[-1])
        ends.append(ends[-1] + max((int(r["iteration"]) for r in rows), default=0))
    return teacher, student, contrastive, ends[1:]


def training_curves(runs: Sequence[tuple[str, list[dict]]], path: str | os.PathLike, width: float,
                    psnr_title: str = "validation PSNR, Y channel",
                    student_alone: list[dict] | None = None) -> Path:
    """Write a PNG of the L1 losses, the contrastive term (when logged) and validation PSNR.

    runs: (stage, log rows) pairs, drawn one after the other along x (teacher then csd, say)
    with a grey line at each boundary; one pair for a single run. Rows may lack any value
    (no validation yet, a stage without a teacher): those curves are left out.
    student_alone: the log of a student-stage run to compare with (the demo's student trained
    alone), drawn from iteration 0 as a curve of its own.
    """
    from PIL import Image, ImageDraw

    teacher, student, contrastive, marks = _chained(runs)
    total = marks.pop() if marks else 0  # the last run ends at the right edge, not a boundary
    alone = {key: _points(student_alone or [], STUDENT_KEYS["student"][i], 0)
             for i, key in enumerate(("l1", "psnr"))}
    x_max = max([total] + [x for points in alone.values() for x, _ in points])

    names = ("teacher (width 1)",
             f"{'CSD student' if student_alone is not None else 'student'} (width {width:g})",
             f"student alone (width {width:g})")
    def lines(key: str) -> list:
        return [(names[0], TEACHER_COLOUR, teacher[key]), (names[1], STUDENT_COLOUR, student[key]),
                (names[2], ALONE_COLOUR, alone[key])]

    # L1 terms rather than the total: the contrastive term (x lambda_c) would dwarf them
    panels = [("training L1 loss (pixel values 0-255)" + _boundaries([s for s, _ in runs]), lines("l1"))]
    if contrastive:
        panels.append(("contrastive term: sum over VGG layers of w * d(T,S) / d(S,negatives)",
                       [(names[1], STUDENT_COLOUR, contrastive)]))
    panels.append((psnr_title, lines("psnr")))

    img = Image.new("RGB", (720, 20 + PANEL_PITCH * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.font = text_font(12)
    for i, (title, series) in enumerate(panels):
        top = 40 + PANEL_PITCH * i
        _panel(draw, (50, top, 660, top + 210), title, series, x_max, marks,
               "iteration" if i == len(panels) - 1 else None)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return atomic_write_bytes(path, buf.getvalue())
