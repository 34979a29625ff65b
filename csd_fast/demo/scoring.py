"""Scoring the demo's networks on the held-out photographs: PSNR/SSIM, CPU time per image,
and the regions the side-by-side figure shows."""
from __future__ import annotations

import time
from pathlib import Path

from .figures import detailed_region
from .settings import CROP, SCALE, STUDENT_WIDTH

# the networks in the figure's columns, between bicubic and HR
FIGURE_METHODS = ("student_alone", "student", "teacher")


def score(models: dict, held_dir: Path, sr_dir: Path) -> dict:
    """PSNR/SSIM on the held-out images per method, the SR images saved under sr_dir/<method>."""
    from ..evaluation import evaluate

    runs = {"student_alone": (models["student_alone"], STUDENT_WIDTH),
            "student": (models["csd"], STUDENT_WIDTH), "teacher": (models["teacher"], 1.0),
            "csd_teacher": (models["csd"], 1.0), "slim_student": (models["slim_student"], 1.0)}
    results = {}
    for key, (model, width) in runs.items():
        res = evaluate(model, [held_dir], SCALE, width=width, save_images=sr_dir / key, progress=False)
        results[key] = next(iter(res.values()))
    return results


def time_per_image(models: dict, held_dir: Path, repeats: int = 3) -> dict:
    """CPU milliseconds per held-out image of the full network (width 1) and of the exported
    slim student, best of `repeats` passes over the images."""
    import torch

    from ..data import SRFolder

    full, slim = models["csd"], models["slim_student"]
    images = [full.to_model_range(lr.float().unsqueeze(0)) for _, lr, _ in SRFolder(held_dir, SCALE)]
    runners = {"teacher": lambda x: full(x, 1.0), "slim_student": lambda x: slim(x, 1.0)}
    ms = {}
    with torch.inference_mode():
        for name, forward in runners.items():
            best = float("inf")
            for _ in range(repeats + 1):  # the first pass warms up
                t = time.perf_counter()
                for x in images:
                    forward(x)
                best = min(best, time.perf_counter() - t)
            ms[name] = 1e3 * best / len(images)
    return ms


def crops(held_dir: Path, sr_dir: Path) -> list[dict]:
    """Per held-out image, its most detailed CROP x CROP region (smaller for small images) as
    bicubic, each network and HR show it, with each one's PSNR over that region (Y channel).
    The region keeps SCALE pixels from the edges, the border the protocol leaves out."""
    from ..data import SRFolder, imresize, read_image
    from ..evaluation import to_uint8
    from ..metrics import psnr

    rows = []
    for name, lr, hr in SRFolder(held_dir, SCALE):
        side = min(CROP, hr.shape[1] - 2 * SCALE, hr.shape[2] - 2 * SCALE)
        y, x = detailed_region(hr, side, SCALE)
        ims = [to_uint8(imresize(lr, SCALE))]
        ims += [read_image(sr_dir / key / "heldout" / f"{name}.png") for key in FIGURE_METHODS]
        ims.append(hr)
        pieces = [im[:, y:y + side, x:x + side].contiguous() for im in ims]
        scores = [psnr(c, pieces[-1]) for c in pieces[:-1]] + [None]
        rows.append({"image": name, "hr": hr, "region": (y, x, side), "crops": pieces, "psnr": scores})
    return rows
