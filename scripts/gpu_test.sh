#!/usr/bin/env bash
# The GPU tests in one command (issue: "GPU tests run in one device command"): on a machine with a CUDA GPU,
# sets up (no apt with DSRL_SKIP_APT=1), builds with the kernels, runs every test labelled gpu, the kernel tests
# under compute-sanitizer (memcheck, racecheck) on small shapes, the DSA kernel benchmark and the keep-indexer one.
#   bash scripts/gpu_test.sh                       # build in build-gpu, tests + sanitizer + bench
#   DSRL_GPU_BENCH_ARGS="--lengths 4096,32768" bash scripts/gpu_test.sh
#   DSRL_GPU_SKIP_BENCH=1 bash scripts/gpu_test.sh  # tests and sanitizer only
# On the lent GPU machine (no network) stage the packages it lacks first — here: bash ../shared/device-kit/stage.sh
# && bash scripts/device_deps.sh; there: carry [".device-kit", ".device-deps"] and start the command with
# source .device-kit/env.sh && source .device-deps/env.sh && ...
# Logs go to $OUT (the device tool's output folder) when set, else build-gpu/gpu_test/. Exits non-zero on any
# failure (a benchmark failure included).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${DSRL_BUILD_DIR:-build-gpu}
logs=${OUT:-$build/gpu_test}
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$logs/gpu.txt"

bash scripts/setup.sh >"$logs/setup.log" 2>&1 || { tail -20 "$logs/setup.log"; exit 1; }
python=$(readlink -f "$root/.venv")/bin/python
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_WITH_CUDA=ON -DDSRL_PYTHON="$python" \
    >"$logs/configure.log" 2>&1 || { tail -30 "$logs/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$logs/build.log" 2>&1 || { grep -E "error|FAILED" "$logs/build.log" | head -40; exit 1; }
echo "[gpu_test] built in $build"

status=0
ctest --test-dir "$build" -L gpu --output-on-failure -V >"$logs/ctest_gpu.log" 2>&1 || status=1
grep -E "\[sparse_mla|\[model kernels|\[fp8|Test +#|tests passed|tests failed|\(Failed\)|SKIPPED|GPU test skipped" \
    "$logs/ctest_gpu.log" | sed 's/^[0-9]*: //' || true

# compute-sanitizer on the kernel tests' small shapes (memcheck: out-of-bounds and misaligned accesses;
# racecheck: shared-memory hazards between threads of a block).
tests_bin=$(find "$build" -name dsrl_dsa_gpu_tests -type f -perm -u+x | head -1)
if command -v compute-sanitizer >/dev/null; then
    declare -A filters=(
        [memcheck]=${DSRL_MEMCHECK_FILTER:-"SparseMlaKernelTest.*:NormRopeKernelTest.*:SparseMlaSimtTest.*:IndexerKernelTest.LogitsMatchTheReference:IndexerKernelTest.BackwardMatchesAutograd:IndexerKernelTest.TopkRowsEqualsTheStableSortSelection:IndexerKernelTest.PagedTopkMatchesTheReferenceOnGatheredKeys:IndexerKernelTest.RejectsBadArguments:PagedSlotsKernelTest.*"}
        [racecheck]=${DSRL_RACECHECK_FILTER:-"SparseMlaKernelTest.DispatchFollowsModelImpl:SparseMlaKernelTest.DecodeSplitsMatchReference:IndexerKernelTest.RejectsBadArguments:IndexerKernelTest.PagedTopkMatchesTheReferenceOnGatheredKeys:PagedSlotsKernelTest.*:NormRopeKernelTest.AddNorm*"}
    )
    for tool in memcheck racecheck; do
        if timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 "$tests_bin" \
            --gtest_filter="${filters[$tool]}" >"$logs/sanitizer_$tool.log" 2>&1; then
            echo "[gpu_test] compute-sanitizer $tool: clean ($(grep -c '^\[       OK' "$logs/sanitizer_$tool.log") tests: ${filters[$tool]})"
        else
            echo "[gpu_test] compute-sanitizer $tool: FAILED or timed out (see $logs/sanitizer_$tool.log)"
            tail -30 "$logs/sanitizer_$tool.log"
            status=1
        fi
    done
    # The decode kernels of issue 23 outside dsa/: the router, the SwiGLU product, the routed experts, the sampling kernel.
    for bin in dsrl_moe_gpu_tests dsrl_rollout_gpu_tests; do
        path=$(find "$build" -name "$bin" -type f -perm -u+x | head -1)
        if timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$path" \
            --gtest_filter='MoeKernelTest.RouterBreaks*:MoeKernelTest.SiluMul*:MoeKernelTest.KernelsStay*:MoeKernelTest.DecodeBlock*:SamplingKernelTest.Ties*:SamplingKernelTest.Takes*' \
            >"$logs/sanitizer_memcheck_$bin.log" 2>&1; then
            echo "[gpu_test] compute-sanitizer memcheck ($bin): clean"
        else
            echo "[gpu_test] compute-sanitizer memcheck ($bin): FAILED or timed out (see $logs/sanitizer_memcheck_$bin.log)"
            status=1
        fi
    done
else
    echo "[gpu_test] compute-sanitizer not found: sanitizer runs skipped"
fi

if [ -z "${DSRL_GPU_SKIP_BENCH:-}" ]; then
    "$build/bin/dsrl_bench_dsa" ${DSRL_GPU_BENCH_ARGS:-} 2>&1 | tee "$logs/bench_dsa.txt" || status=1
    # Keep-indexer (issue 24): the bf16 decode's DSA top-k against the training forward's, log-prob mismatch.
    "$build/bin/dsrl_bench_keep_indexer" --device cuda 2>&1 | tee "$logs/bench_keep_indexer.txt" || status=1
fi
[ "$status" = 0 ] && echo "[gpu_test] all passed" || echo "[gpu_test] FAILURES"
exit $status
