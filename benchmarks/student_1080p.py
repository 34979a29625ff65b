"""Frames per second of exported slim students upscaling 480x270 to 1920x1080 (x4) on the
CPU, each implementation run in turn within every round (interleaved, one process), so
that a machine whose load drifts slows all rows alike. Prints a markdown table of
medians, with ratios against ONNX Runtime and torch.compile, and each row's best round
(on a shared machine the least disturbed one).

    python benchmarks/student_1080p.py [--rounds 5] [--size 270x480] [--no-compile]

Rows (random weights, the student exported by csd_fast.export.export_student):
- fused fp32 / fused bf16: csd_fast.inference.upscale on the fused backend (what
  `csd-fast upscale` runs), float32, or bfloat16 autocast;
- onnxruntime fp32: the exported .onnx in ONNX Runtime's CPU provider, intra-op threads =
  cores, spinning off (spinning threads would keep the cores busy into the next row);
- compile fp32: torch.compile (default mode) of the slim student on the reference
  backend (plain PyTorch convolutions).
Each output is checked against the reference backend before anything is timed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# as csd-fast sets it (csd_fast/cli/__init__.py): transparent huge pages for torch's
# large CPU tensors, read once when torch starts; --no-thp leaves it unset
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# inductor compiles in worker processes that stay behind; one thread keeps them from
# competing with the rows timed after the compile
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

from csd_fast import EDSRCSD  # noqa: E402
from csd_fast.export import export_student  # noqa: E402
from csd_fast.inference import upscale  # noqa: E402

# key -> (preset, width, label)
STUDENTS = {
    "baseline": ("edsr-baseline", 0.25, "EDSR-baseline w0.25 (16 ch, 16 blocks)"),
    "edsr": ("edsr", 0.25, "EDSR w0.25 (64 ch, 32 blocks)"),
}
IMPLS = ("fused fp32", "fused bf16", "onnxruntime fp32", "compile fp32")


def slim_student(preset: str, width: float) -> EDSRCSD:
    torch.manual_seed(0)
    teacher = EDSRCSD.from_preset(preset, scale=4).eval()
    return export_student(teacher, width, backend="fused").eval()


def onnx_session(slim: EDSRCSD):
    """An ONNX Runtime session of the exported student, or None without onnxruntime/onnx."""
    try:
        import onnxruntime as ort

        from csd_fast.export.onnx_file import onnx_bytes
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes(slim), options, providers=["CPUExecutionProvider"])


def runners(slim: EDSRCSD, impls=IMPLS) -> dict:
    """name -> fn(x) returning the float32 SR image, for the implementations available."""
    reference = EDSRCSD(**slim.config(), backend="reference").eval()
    reference.load_state_dict(slim.state_dict())
    out = {}
    if "fused fp32" in impls:
        out["fused fp32"] = lambda x: upscale(slim, x)
    if "fused bf16" in impls:
        out["fused bf16"] = lambda x: upscale(slim, x, autocast_dtype=torch.bfloat16)
    session = onnx_session(slim) if "onnxruntime fp32" in impls else None
    if session is not None:
        out["onnxruntime fp32"] = lambda x: torch.from_numpy(session.run(None, {"lr": x.numpy()})[0])
    if "compile fp32" in impls:
        torch._dynamo.reset()
        compiled = torch.compile(lambda t: reference(t, 1.0))

        def run_compiled(x):
            with torch.no_grad():
                return compiled(x)

        out["compile fp32"] = run_compiled
    out["_reference"] = lambda x: upscale(reference, x)
    return out


def check(fns: dict, x: torch.Tensor) -> dict:
    """Assert every output agrees with the reference backend's; returns the compile time
    of each row's first call (seconds)."""
    want = fns["_reference"](x)
    first_call = {}
    for name, fn in fns.items():
        if name == "_reference":
            continue
        start = time.perf_counter()
        got = fn(x)
        first_call[name] = time.perf_counter() - start
        assert_agrees(name, got, want)
    return first_call


def assert_agrees(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if "bf16" in name:
        # bfloat16 keeps 8 bits of mantissa: compare the error to the signal
        err = (got - want).abs().mean() / want.abs().mean()
        assert err < 2e-2, f"{name}: mean relative error {err:.3g}"
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3, msg=lambda m: f"{name}: {m}")


def interleaved(fns: dict, x: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    times = {name: [] for name in fns if name != "_reference"}
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            fns[name](x)
            times[name].append(time.perf_counter() - start)
    return times


def table(results: dict) -> str:
    lines = ["| student | implementation | median s/frame | fps | vs ORT fp32 | vs torch.compile fp32 "
             "| best s/frame | best vs ORT |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for student, times in results.items():
        med = {name: statistics.median(t) for name, t in times.items()}
        best = {name: min(t) for name, t in times.items()}
        for name, m in med.items():
            ort_ratio = f"{med['onnxruntime fp32'] / m:.2f}x" if "onnxruntime fp32" in med else ""
            compile_ratio = f"{med['compile fp32'] / m:.2f}x" if "compile fp32" in med else ""
            best_ratio = f"{best['onnxruntime fp32'] / best[name]:.2f}x" if "onnxruntime fp32" in best else ""
            lines.append(f"| {student} | {name} | {m:.3f} | {1 / m:.2f} | {ort_ratio} | {compile_ratio} "
                         f"| {best[name]:.3f} | {best_ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", default="270x480", help="LR HxW (default 270x480: 1080p out)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--students", default=",".join(STUDENTS),
                        help="comma-separated keys of STUDENTS")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated rows to run")
    parser.add_argument("--no-thp", action="store_true",
                        help="leave THP_MEM_ALLOC_ENABLE unset (read before torch is imported)")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    impls = [i for i in args.impls.split(",") if not (args.no_compile and i.startswith("compile"))]
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    results = {}
    for student in args.students.split(","):
        preset, width, label = STUDENTS[student]
        fns = runners(slim_student(preset, width), impls)
        first = check(fns, x)
        print(f"{label}: first calls (s): " + ", ".join(f"{k} {v:.1f}" for k, v in first.items()),
              flush=True)
        results[label] = interleaved(fns, x, args.rounds)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(f"torch {torch.__version__}, {os.cpu_count()} threads, {args.rounds} rounds, LR {h}x{w}, "
          f"THP_MEM_ALLOC_ENABLE={thp}")
    print(table(results))


if __name__ == "__main__":
    main()
