"""Render a pytest-benchmark JSON file as a markdown section for benchmarks/RESULTS.md.

Each benchmark group holds one fused implementation and its references, timed on the
same inputs in the same run; the table gives each median and reference / fused.

    python benchmarks/render_results.py bench.json --command "pytest benchmarks ..." >> benchmarks/RESULTS.md
"""
import argparse
import json
import re
from collections import defaultdict


def impl_of(bench: dict) -> str:
    """The implementation a benchmark timed: extra_info["impl"] where the benchmark set
    it, else the id part naming one (fused, reference..., loop, compile...)."""
    if "impl" in bench.get("extra_info", {}):
        return bench["extra_info"]["impl"]
    match = re.search(r"\[(.*)\]", bench["name"])
    parts = match.group(1).split("-") if match else [bench["name"]]
    named = [p for p in parts if p.startswith(("fused", "reference", "loop", "compile", "eager"))]
    return named[0] if named else parts[-1]


def render(data: dict, command: str) -> str:
    info = data["machine_info"]
    torch_version = data["benchmarks"][0]["extra_info"].get("torch", "?") if data["benchmarks"] else "?"
    gpu = data["benchmarks"][0]["extra_info"].get("gpu", "") if data["benchmarks"] else ""
    lines = [
        f"### {data['datetime'][:10]}: {info.get('cpu', {}).get('brand_raw', info['processor'])}"
        + (f", {gpu}" if gpu else ""),
        "",
        f"- command: `{command}`",
        f"- torch {torch_version}, Python {info['python_version']}, {info['node']}",
        "",
        "| group | implementation | median (ms) | min (ms) | reference / fused (median) | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][impl_of(bench)] = bench
    for group, impls in groups.items():
        fused = impls.get("fused")
        for impl, bench in sorted(impls.items(), key=lambda kv: kv[0] != "fused"):
            median = bench["stats"]["median"]
            ratio = f"{median / fused['stats']['median']:.2f}x" if fused and impl != "fused" else ""
            peak = bench["extra_info"].get("peak_mem_mb")
            lines.append(f"| {group} | {impl} | {median * 1e3:.3f} | {bench['stats']['min'] * 1e3:.3f} | {ratio} | "
                         f"{'' if peak is None else f'{peak:.0f}'} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--command", default="pytest benchmarks --benchmark-only")
    args = parser.parse_args()
    with open(args.json_file) as f:
        print(render(json.load(f), args.command))


if __name__ == "__main__":
    main()
