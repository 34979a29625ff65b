"""benchmarks/render_results.py on small synthetic pytest-benchmark files: which rows and
columns the tables hold, and the ratios to fused."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "render_results.py"
spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
render_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_results)


def bench(group, name, median_s, min_s=None, **extra):
    return {"group": group, "name": name, "fullname": f"benchmarks/test_bench_{group.split()[0]}.py::{name}",
            "extra_info": {"torch": "2.99", **extra},
            "stats": {"median": median_s, "min": min_s if min_s is not None else median_s * 0.9}}


def data(*benchmarks):
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU"}, "processor": "x86_64",
                             "python_version": "3.11.7", "node": "box"},
            "datetime": "2026-12-03T10:00:00", "benchmarks": list(benchmarks)}


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of text, each a list of rows of stripped cells (separator row dropped)."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        else:
            current = None
    return found


THREE_WAY = [  # the file's order: reference before fused; one case without compile or fused
    bench("conv cpu 64ch", "test_conv[cpu-reference]", 0.005),
    bench("conv cpu 64ch", "test_conv[cpu-fused]", 0.002, peak_mem_mb=12.4),
    bench("conv cpu 64ch", "test_conv[cpu-compile]", 0.003),
    bench("distance cpu K10", "test_distance[loop-relu1_1-cpu]", 0.010),
    bench("distance cpu K10", "test_distance[fused-relu1_1-cpu]", 0.004),
    bench("distance cpu K10", "test_distance[reference-relu1_1-cpu]", 0.001),
    bench("tail cuda bf16", "test_tail[x]", 0.0007, impl="reference_channels_last"),
    bench("tail cuda bf16", "test_tail[y]", 0.0005, impl="fused"),
    bench("upsample cpu", "test_up[cpu-fused_nchw]", 0.003),
    {**bench("skipped", "test_skipped[cpu-fused]", 1.0), "stats": None},  # did not run
]


def test_comparison_table_puts_fused_reference_and_compile_side_by_side():
    text = render_results.render(data(*THREE_WAY), "pytest benchmarks")
    comparison, detail = tables(text)
    assert comparison[0] == ["case", "fused (ms)", "reference (ms)", "torch.compile (ms)",
                             "reference / fused", "torch.compile / fused"]
    assert comparison[1:] == [
        ["conv cpu 64ch", "2.000", "5.000", "3.000", "2.50x", "1.50x"],
        ["distance cpu K10", "4.000", "1.000", "", "0.25x", ""],
        # no plain reference: its variant stands in, named
        ["tail cuda bf16", "0.500", "0.700 (reference_channels_last)", "", "1.40x", ""],
        ["upsample cpu", "", "", "", "", ""],  # nothing to compare: no ratio
    ]
    assert "skipped" not in text
    assert all(len(row) == len(detail[0]) for row in detail)
    # every implementation, fused first in each case, then reference, compile, the rest
    assert [row[:2] for row in detail[1:]] == [
        ["conv cpu 64ch", "fused"], ["conv cpu 64ch", "reference"], ["conv cpu 64ch", "compile"],
        ["distance cpu K10", "fused"], ["distance cpu K10", "reference"], ["distance cpu K10", "loop"],
        ["tail cuda bf16", "fused"], ["tail cuda bf16", "reference_channels_last"],
        ["upsample cpu", "fused_nchw"]]
    conv_fused, conv_reference = detail[1], detail[2]
    assert conv_fused[2:] == ["2.000", "1.800", "", "12"]  # median, min, no ratio to itself, peak MB
    assert conv_reference[4] == "2.50x" and detail[6][4] == "2.50x"  # loop: 10 ms over fused's 4
    assert text.startswith("### 2026-12-03: Test CPU\n")
    assert "- command: `pytest benchmarks`" in text and "torch 2.99, Python 3.11.7, box" in text


def test_no_compile_column_without_compile_rows():
    comparison = tables(render_results.render(data(*THREE_WAY[3:6]), "c"))[0]
    assert comparison == [["case", "fused (ms)", "reference (ms)", "reference / fused"],
                          ["distance cpu K10", "4.000", "1.000", "0.25x"]]


def test_command_line(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data(*THREE_WAY)))
    assert render_results.main([str(path)]) == 0
    out = capsys.readouterr().out
    # without --command the header names the files the rows come from
    assert "- from `benchmarks/test_bench_conv.py`, `benchmarks/test_bench_distance.py`, " in out
    assert len(tables(out)) == 2
    assert render_results.main([str(path), "--command", "pytest benchmarks -k conv"]) == 0
    assert "- command: `pytest benchmarks -k conv`" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    ("not json", "Expecting value"),
    (json.dumps({"machine_info": {}}), "not a pytest-benchmark file"),
    (json.dumps(data({**THREE_WAY[0], "stats": None})), "no timed benchmark"),
])
def test_bad_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    assert render_results.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"render_results.py: error: {path}: ") and message in err
    assert err.count("\n") == 1


def test_negatives_scaling_plot_draws_both_metrics(tmp_path, monkeypatch):
    """benchmarks/plot_negatives_scaling.py on synthetic rows: it runs (it draws with the
    trainer's chart panel, whose signature it must keep up with) and writes a PNG."""
    from PIL import Image

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("plot_negatives_scaling",
                                                  SCRIPT.parent / "plot_negatives_scaling.py")
    plot_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_module)
    rows = []
    for k in (1, 10, 64):
        for impl, ms, mb in (("fused", 10 + k, 30), ("reference", 12 + 3 * k, 20 + 8 * k)):
            if impl == "reference" and k == 64:
                continue  # a reference row the benchmark skipped
            rows.append(bench(f"negatives_scaling cpu contrastive_loss B8 HR32 K{k}",
                              f"test_loss[cpu-{k}-{impl}]", ms / 1e3, impl=impl, K=k,
                              part="contrastive_loss", peak_mem_mb=mb))
    out = plot_module.plot(data(*rows), tmp_path / "plot.png")
    with Image.open(out) as image:
        assert image.size == (1280, 40 + 290) and image.getcolors(2**16) is not None
        assert len(image.getcolors(2**16)) > 4  # lines and text, not a blank canvas
    with pytest.raises(SystemExit, match="no negatives_scaling rows"):
        plot_module.plot(data(bench("imresize cpu", "test_imresize[fused]", 0.1)), tmp_path / "x.png")
