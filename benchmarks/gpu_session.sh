#!/usr/bin/env bash
# Everything a lent GPU session should do, in one call: build with CUDA kernels (about a
# minute on 16 cores), run the GPU tests (marker cuda: the fallbacks under injected
# faults, NVRTC off, deterministic mode, odd widths, the CUDA-graph caches, the ops
# against float64, the graphs the model builds against the deviceless engine list,
# the training step's capture), the GPU baselines (per layer and whole network,
# against eager and torch.compile), compute-sanitizer memcheck over one call per CUDA
# conv path and racecheck over the contrastive kernels, the CUDA benchmark suite, and the
# negatives_scaling group (K 1 .. 1024 at B16 HR192: time, peak memory, and its plot).
# Full logs go to $OUT (default /tmp/csd_fast_gpu); a short summary is printed last.
#   bash benchmarks/gpu_session.sh            (from the repository root)
# Wheels the GPU image lacks travel in .whl/ (carry=[".whl"]): pypng and
# nvidia-cudnn-frontend (the header-only cuDNN graph API the CUDA build needs), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform any -d .whl pypng==0.20220715.0 nvidia-cudnn-frontend==1.28.0
# The device tool stops a command at 10 minutes: every step runs under a timeout cut
# to what is left of SESSION_BUDGET_S (default 500 s) so the summary and the log
# archive are always written; a step with no time left is skipped and says so.
set -uo pipefail
OUT=${OUT:-/tmp/csd_fast_gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEADLINE=$((SECONDS + ${SESSION_BUDGET_S:-500}))
summary=()
step() {  # step NAME LOG CAP_S COMMAND...: run under min(CAP_S, time left), keep the log
    local name=$1 log=$2 cap=$3; shift 3
    local left=$((DEADLINE - SECONDS)) t0=$SECONDS rc
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$left" -lt 15 ]; then
        echo "skipped: out of session time" >"$OUT/$log"
        rc=125
    else
        timeout -k 10 "$cap" "$@" >"$OUT/$log" 2>&1
        rc=$?
        [ $rc -eq 124 ] && echo "timed out after ${cap}s" >>"$OUT/$log"
    fi
    summary+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$OUT/$log" | cut -c1-100)")")
    return $rc
}
finish() {  # the device tool returns at most 8 files: pack the logs into one
    (cd "$OUT" && shopt -s nullglob && files=(./*.log ./*.txt) && [ ${#files[@]} -gt 0 ] &&
        tar -czf logs.tar.gz "${files[@]}" && rm -f "${files[@]}")
}

# The lent machines set CC/CXX to a wrapper in /opt/gcc; extensions built with it crash
# (SIGSEGV) whenever a kernel throws c10::Error. The system compiler works.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++

# Packages the GPU image lacks travel as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

if ! step build build.log 200 env CSD_FAST_CUDA=1 MAX_JOBS=16 \
        python3 -m pip install -v --no-deps --no-build-isolation .; then
    tail -n 40 "$OUT/build.log"; printf '%s\n' "${summary[@]}"; finish; exit 1
fi
grep -E "csrc/.*warning" "$OUT/build.log" | head -n 20 >"$OUT/build_warnings.txt"
# from outside the source tree, so the installed package is the one imported
(cd /tmp && python3 -c "import csd_fast; print(csd_fast.build_info())") | tee "$OUT/build_info.txt"

# The GPU tests only (marker cuda; the CPU and DDP tests run in CI): the fallbacks and
# the CUDA-graph paths first (what a first GPU run is most likely to break), then the
# conv ops against float64 and the rest. -x stays off: one failure must not hide others.
step tests tests.log 170 pytest -m cuda tests/test_cuda_fallbacks.py tests/test_cuda_inference.py \
    tests/test_sliced_conv_cuda.py tests -q -rs --durations=15
step baselines baselines.log 170 python3 benchmarks/gpu_baselines.py --max-autotune \
    --json "$OUT/baselines.json"
# Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees a
# graph that writes past its tensor (a wrong stride or offset) instead of into a
# neighbour in the same pool block. The conv ops are cuDNN's kernels on our tensor
# descriptors; racecheck only judges our own kernels, the contrastive distance and sums.
step memcheck memcheck.log 70 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 9 pytest tests/test_sliced_conv_cuda.py \
    tests/test_contrastive_distance.py tests/test_streamed_negatives.py -q \
    -k "(test_contrastive_distance and cuda and not compile) or sanitizer_set or (sums_match and cuda and fused and dtype1)"
step racecheck racecheck.log 40 compute-sanitizer --tool racecheck --error-exitcode 9 \
    pytest tests/test_contrastive_distance.py tests/test_streamed_negatives.py -q \
    -k "cuda and (forward_matches or (sums_match and fused and dtype1))"
step benchmarks bench.log 100 pytest benchmarks -q --benchmark-only -k "cuda and not negatives_scaling" \
    --benchmark-json "$OUT/bench.json"
[ -s "$OUT/bench.json" ] && python3 benchmarks/render_results.py "$OUT/bench.json" \
    --command "pytest benchmarks --benchmark-only -k cuda" >"$OUT/bench.md" 2>&1
# a step of its own: the reference's large-K rows cannot eat the suite's time
step negatives negatives.log 120 pytest benchmarks/test_bench_negatives_scaling.py -q -rs \
    --benchmark-only -k cuda --benchmark-json "$OUT/negatives.json"
if [ -s "$OUT/negatives.json" ]; then
    python3 benchmarks/render_results.py "$OUT/negatives.json" --command \
        "pytest benchmarks/test_bench_negatives_scaling.py --benchmark-only -k cuda" >>"$OUT/bench.md" 2>&1
    python3 benchmarks/plot_negatives_scaling.py "$OUT/negatives.json" \
        --out "$OUT/negatives_scaling_cuda.png" >>"$OUT/negatives.log" 2>&1
fi

echo; [ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"; echo
sed -n '/^| layer/,$p' "$OUT/baselines.log"
echo; grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/memcheck.log" "$OUT/racecheck.log"
echo; cat "$OUT/build_warnings.txt"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 3
echo; printf '%s\n' "${summary[@]}"
finish
