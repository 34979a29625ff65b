#!/usr/bin/env bash
# Everything a lent GPU session should do, in one call: build with CUDA kernels, run
# the test suite (CUDA cases included), compute-sanitizer memcheck and racecheck over
# the CUDA op tests, the benchmark suite and the GPU baselines. Full logs go to $OUT
# (default /tmp/csd_fast_gpu); a short summary is printed last.
#   bash benchmarks/gpu_session.sh            (from the repository root)
set -uo pipefail
OUT=${OUT:-/tmp/csd_fast_gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
summary=()
step() {  # step NAME LOG COMMAND...: run, keep the log, remember the exit status
    local name=$1 log=$2; shift 2
    local t0=$SECONDS
    "$@" >"$OUT/$log" 2>&1
    local rc=$?
    summary+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$OUT/$log" | cut -c1-90)")")
    return $rc
}

# The lent machines set CC/CXX to a wrapper in /opt/gcc; extensions built with it crash
# (SIGSEGV) whenever a kernel throws c10::Error. The system compiler works.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++

# Pure-Python packages the GPU image lacks (e.g. pypng) can travel as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

if ! step build build.log env CSD_FAST_CUDA=1 MAX_JOBS=16 \
        python3 -m pip install -v --no-deps --no-build-isolation .; then
    tail -n 40 "$OUT/build.log"; printf '%s\n' "${summary[@]}"; exit 1
fi
# from outside the source tree, so the installed package is the one imported
(cd /tmp && python3 -c "import csd_fast; print(csd_fast.build_info())") | tee "$OUT/build_info.txt"

step tests tests.log pytest tests -q -rs
step memcheck memcheck.log compute-sanitizer --tool memcheck --error-exitcode 9 \
    pytest tests/test_contrastive_distance.py -q -k "cuda and not compile"
step racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 9 \
    pytest tests/test_contrastive_distance.py -q -k "cuda and forward_matches"
step benchmarks bench.log pytest benchmarks -q --benchmark-only -k cuda \
    --benchmark-json "$OUT/bench.json"
python3 benchmarks/render_results.py "$OUT/bench.json" \
    --command "pytest benchmarks --benchmark-only -k cuda" >"$OUT/bench.md" 2>&1
step baselines baselines.log timeout 240 python3 benchmarks/gpu_baselines.py --json "$OUT/baselines.json"

echo; cat "$OUT/bench.md"; echo
grep -A 40 '^| case' "$OUT/baselines.log"
echo; grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/memcheck.log" "$OUT/racecheck.log"
echo; printf '%s\n' "${summary[@]}"
# the device tool returns at most 8 files: pack the logs into one
(cd "$OUT" && tar -czf logs.tar.gz ./*.log ./*.txt && rm -f ./*.log ./*.txt)
