"""Draw the negatives_scaling group of a pytest-benchmark JSON file: median time and peak
memory against K, fused and reference, for the contrastive loss and the whole CSD step.

    python benchmarks/plot_negatives_scaling.py bench.json --out benchmarks/negatives_scaling_cpu.png

Drawn with PIL through the trainer's chart panel (csd_fast.train.curves), so it needs no
plotting package. A reference row the benchmark skipped (it would not fit in memory) is
missing from its line, and the panel's title says up to which K the reference ran.
"""
import argparse
import io
import json
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from csd_fast.train.curves import STUDENT_COLOUR, TEACHER_COLOUR, _panel
from render_results import impl_of

COLOURS = {"fused": STUDENT_COLOUR, "reference": TEACHER_COLOUR}
PARTS = {"contrastive_loss": "contrastive loss (5 VGG layers, fwd + bwd)", "step": "whole CSD step"}
METRICS = (("median ms", lambda b: b["stats"]["median"] * 1e3),
           ("peak MB", lambda b: b["extra_info"].get("peak_mem_mb")))


def scaling_rows(data: dict) -> dict:
    """{(part, setting): {impl: [(K, benchmark), ...] sorted by K}}; setting is the group's
    name without its K (device, batch, patch, model)."""
    rows: dict = defaultdict(lambda: defaultdict(list))
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info", {})
        if not bench["group"].startswith("negatives_scaling") or "K" not in extra:
            continue
        setting = re.sub(r" K\d+", "", bench["group"].removeprefix("negatives_scaling "))
        rows[(extra["part"], setting)][impl_of(bench)].append((extra["K"], bench))
    return {key: {impl: sorted(points, key=lambda p: p[0]) for impl, points in impls.items()}
            for key, impls in rows.items()}


def plot(data: dict, out: Path) -> Path:
    rows = scaling_rows(data)
    if not rows:
        raise SystemExit("no negatives_scaling rows in this file")
    k_max = max(k for impls in rows.values() for points in impls.values() for k, _ in points)
    img = Image.new("RGB", (1280, 40 + 290 * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((50, 10), f"negatives_scaling: time and peak memory against the number of negatives K "
                        f"(x axis 0 .. {k_max}); blue fused (csd_fast), red the reference's formulation",
              fill=(0, 0, 0))
    for i, ((part, setting), impls) in enumerate(sorted(rows.items())):
        top = 80 + 290 * i
        ran = "; ".join(f"{impl} to K={points[-1][0]}" for impl, points in sorted(impls.items()))
        for j, (metric, value) in enumerate(METRICS):
            series = [(impl, COLOURS.get(impl, (0, 0, 0)),
                       [(k, value(b)) for k, b in points if value(b) is not None])
                      for impl, points in sorted(impls.items())]
            left = 50 + 640 * j
            _panel(draw, (left, top, left + 520, top + 210),
                   f"{PARTS.get(part, part)}, {metric} ({setting})", series, k_max, [],
                   x_label=f"K, the number of negatives ({ran})")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out.write_bytes(buf.getvalue())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--out", default=str(Path(__file__).parent / "negatives_scaling_cpu.png"))
    args = parser.parse_args()
    with open(args.json_file) as f:
        print(plot(json.load(f), Path(args.out)))


if __name__ == "__main__":
    main()
