"""What the demo prints and writes: the results table, the verdict on CSD against the
student trained alone, and the captions of its figures."""
from __future__ import annotations

from .settings import SCALE, STUDENT_WIDTH, ZOOM

# (key, label in the table); the CSD run's weights score twice, at the student's width and at 1
METHODS = (("student_alone", f"student alone (L1, width {STUDENT_WIDTH:g})"),
           ("student", f"student (CSD, width {STUDENT_WIDTH:g})"),
           ("teacher", "teacher (width 1)"),
           ("csd_teacher", "CSD model at width 1"))
# the side-by-side figure's columns: bicubic, scoring.FIGURE_METHODS, HR
FIGURE_COLUMNS = ["bicubic", "student alone", "CSD student", "teacher", "HR"]


def table_lines(table: dict, params: dict, ms: dict) -> list[str]:
    slim_label = f"exported slim student (w {STUDENT_WIDTH:g})"
    rows = [("bicubic", "bicubic", None)] + [(key, label, params["teacher" if key in ("teacher", "csd_teacher")
                                                                     else "student"]) for key, label in METHODS]
    rows.append(("slim_student", slim_label, params["slim_student"]))
    lines = [f"{'method':<32} {'params':>8} {'PSNR':>7} {'SSIM':>7} {'CPU ms/img':>11}"]
    for key, label, n in rows:
        m = table[key]
        count = "-" if n is None else f"{n / 1e3:.1f}k"
        t = f"{ms[key]:.1f}" if key in ms else "-"
        lines.append(f"{label:<32} {count:>8} {m['psnr']:>7.2f} {m['ssim']:>7.4f} {t:>11}")
    return lines


def verdict(table: dict) -> str:
    """What the CSD-vs-alone comparison shows in this run, said plainly either way."""
    gain = table["student"]["psnr"] - table["student_alone"]["psnr"]
    if gain > 0:
        return (f"CSD student vs student alone: {gain:+.2f} dB in this run. With a random VGG19 and a "
                "short schedule this is not evidence about CSD's contrastive term.")
    return (f"CSD student vs student alone: {gain:+.2f} dB: here CSD did not beat training the student "
            "alone. With a random VGG19 the contrastive term carries little signal, and the schedule "
            "is short; the paper's gains need its pretrained VGG19 and full recipe.")


def figure_caption(side: int) -> list[str]:
    """The side-by-side figure's caption, one sentence a line."""
    return [f"x{SCALE} super-resolution of held-out photographs. Each row: the {side}x{side}-pixel region "
            f"with the most detail (outlined at left),",
            f"enlarged {ZOOM}x with nearest-neighbour pixels. Under each: PSNR of that region against HR, "
            "on the Y (luma) channel, as in the table."]
