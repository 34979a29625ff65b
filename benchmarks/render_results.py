"""Render a pytest-benchmark JSON file as markdown: the comparison per benchmarked case, then
every implementation's row, as benchmarks/RESULTS.md records them.

Each benchmark group is one case (an op, a shape, a device) holding the fused implementation
and its references, timed on the same inputs in the same run. The first table puts fused,
reference and torch.compile side by side, one row per case, with each one's median time
over fused's (> 1: fused is faster); where a case has no plain reference, its first variant stands in
(reference_channels_last, say) and is named. The second lists every implementation of each
case (layout variants such as fused_nchw, the loop formulation) with the same ratio.

    pytest benchmarks --benchmark-only --benchmark-json bench.json
    python benchmarks/render_results.py bench.json >> benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import re
import sys

# the comparison table's columns, in this order, when any case has them
COMPARED = ("fused", "reference", "compile")
LABELS = {"compile": "torch.compile"}
NAMED = ("fused", "reference", "loop", "compile", "eager")


def impl_of(bench: dict) -> str:
    """The implementation a benchmark timed: extra_info["impl"] where the benchmark set
    it, else the part of its id naming one (fused, reference..., loop, compile...)."""
    if "impl" in bench.get("extra_info", {}):
        return bench["extra_info"]["impl"]
    match = re.search(r"\[(.*)\]", bench["name"])
    parts = match.group(1).split("-") if match else [bench["name"]]
    named = [p for p in parts if p.startswith(NAMED)]
    return named[0] if named else parts[-1]


def cases(data: dict) -> dict[str, dict[str, dict]]:
    """{group: {implementation: benchmark}}, groups in the order the file holds them, fused
    first within each, then the other compared ones, then the rest in file order."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in data["benchmarks"]:
        if bench.get("stats"):  # a benchmark that did not run has none
            groups.setdefault(bench["group"] or bench["name"], {})[impl_of(bench)] = bench
    rank = {name: i for i, name in enumerate(COMPARED)}
    return {group: dict(sorted(impls.items(), key=lambda kv: rank.get(kv[0], len(rank))))
            for group, impls in groups.items()}


def median_ms(bench: dict | None) -> float | None:
    return None if bench is None else bench["stats"]["median"] * 1e3


def ratio(bench: dict | None, fused: dict | None) -> str:
    """bench's median over fused's, as "2.50x"; blank where either is missing."""
    if bench is None or fused is None:
        return ""
    return f"{bench['stats']['median'] / fused['stats']['median']:.2f}x"


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def pick(impls: dict[str, dict], kind: str) -> str | None:
    """The implementation of a case that stands for kind: the one named so, else (but for
    fused, the baseline of every ratio) its first variant: reference_channels_last where a
    case has no plain reference."""
    if kind in impls or kind == "fused":
        return kind if kind in impls else None
    return next((impl for impl in impls if impl.startswith(kind + "_")), None)


def comparison_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """One row per case: fused, reference and torch.compile medians and their ratios to fused;
    a variant standing in for its kind is named in its cell."""
    shown = [kind for kind in COMPARED if any(pick(impls, kind) for impls in groups.values())]
    others = [kind for kind in shown if kind != "fused"]
    header = (["case"] + [f"{LABELS.get(kind, kind)} (ms)" for kind in shown]
              + [f"{LABELS.get(kind, kind)} / fused" for kind in others])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for group, impls in groups.items():
        fused = impls.get("fused")
        chosen = {kind: pick(impls, kind) for kind in shown}
        times = [ms(median_ms(impls.get(impl))) + ("" if impl in (None, kind) else f" ({impl})")
                 for kind, impl in chosen.items()]
        ratios = [ratio(impls.get(chosen[kind]), fused) for kind in others]
        lines.append("| " + " | ".join([group, *times, *ratios]) + " |")
    return lines


def detail_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Every implementation of every case: median, min, median over fused's, peak memory."""
    lines = ["| case | implementation | median (ms) | min (ms) | implementation / fused (median) | peak MB |",
             "|---|---|---:|---:|---:|---:|"]
    for group, impls in groups.items():
        fused = impls.get("fused")
        for impl, bench in impls.items():
            peak = bench.get("extra_info", {}).get("peak_mem_mb")
            cells = [group, impl, ms(median_ms(bench)), ms(bench["stats"]["min"] * 1e3),
                     "" if impl == "fused" else ratio(bench, fused), "" if peak is None else f"{peak:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def test_files(data: dict) -> list[str]:
    """The benchmark files the JSON's rows come from, in order."""
    files = (bench.get("fullname", "").split("::")[0] for bench in data["benchmarks"])
    return list(dict.fromkeys(f for f in files if f))


def render(data: dict, command: str | None = None) -> str:
    """The markdown section; command: how the file was produced, for the header (without it,
    the header names the benchmark files the rows come from)."""
    groups = cases(data)
    if not groups:
        raise ValueError("the file holds no timed benchmark (was it written with --benchmark-disable, "
                         "or did every benchmark skip?)")
    info = data["machine_info"]
    first = next(iter(next(iter(groups.values())).values())).get("extra_info", {})
    gpu = first.get("gpu", "")
    lines = [
        f"### {data['datetime'][:10]}: {info.get('cpu', {}).get('brand_raw', info.get('processor', '?'))}"
        + (f", {gpu}" if gpu else ""),
        "",
        f"- command: `{command}`" if command else
        f"- from {', '.join(f'`{f}`' for f in test_files(data)) or 'unnamed files'} (`--command` records the command)",
        f"- torch {first.get('torch', '?')}, Python {info.get('python_version', '?')}, {info.get('node', '?')}",
        "",
        "Median time per call; x / fused > 1 means fused is faster.",
        "",
        *comparison_table(groups),
        "",
        "All implementations:",
        "",
        *detail_table(groups),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="written by pytest --benchmark-json FILE")
    parser.add_argument("--command", help="the command that produced the file, for the header")
    args = parser.parse_args(argv)
    try:
        with open(args.json_file) as f:
            data = json.load(f)
        text = render(data, args.command)
    except (OSError, ValueError, KeyError) as err:
        what = {KeyError: f"not a pytest-benchmark file (no {err} entry)"}.get(
            type(err), getattr(err, "strerror", None) or str(err))
        print(f"render_results.py: error: {args.json_file}: {what}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
