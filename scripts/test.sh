#!/usr/bin/env bash
# The test command (README, CI): sets up if needed, configures (Release, ccache, precompiled header), builds,
# and runs every test with CTest: unit tests, mpirun tests (-np 2 and 3), the transformers parity tests.
# GPU tests are skipped with a printed reason on machines without a GPU. Then every libFuzzer harness runs for
# DSRL_FUZZ_SECONDS (default 30; scripts/fuzz.sh, its own clang build in build-fuzz; 0 skips it). Checks that every
# C++/CUDA source matches .clang-format (scripts/format.sh --check). Exits non-zero on any failure, an unformatted
# file or a fuzzing finding included.
# Environment: DSRL_BUILD_DIR (default build), DSRL_CTEST_ARGS (extra ctest arguments, e.g. "-L cpu"),
# DSRL_FUZZ_SECONDS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
bash scripts/setup.sh
# Formatting first (seconds), but the build and tests still run so one run reports everything.
format_rc=0
bash scripts/format.sh --check || format_rc=$?
build=${DSRL_BUILD_DIR:-build}
jobs=$(nproc)

# Open MPI refuses to run as root without these (CI and the GPU machine run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# MKL's strict reproducible mode for the test binaries too (dsrl's own binaries set it themselves: core/main_guard).
export MKL_CBWR=${MKL_CBWR:-AUTO,STRICT}
# ctest -j runs two test processes on CI's two cores, each with OpenMP threads: spinning waiters then starve each other
# (MultiTurnContextTest next to an EngineTest: 50 s with the default policy, 7 s passive; 5 s alone). Numerics unchanged.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-10G}
command -v ccache >/dev/null && ccache --zero-stats >/dev/null

# The venv's real path (not the .venv symlink inside the clone) keeps torch's include paths identical across
# clones, so ccache hits from a fresh clone.
python=$(readlink -f "$root/.venv")/bin/python
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_PYTHON="$python" \
    ${DSRL_CMAKE_ARGS:-}
configured=$(date +%s)
cmake --build "$build" -j "$jobs"
built=$(date +%s)
if command -v ccache >/dev/null; then
    ccache --show-stats 2>/dev/null | grep -E "Hits:|Misses:" | sed "s/^ */[ccache] /" || true
fi

set +e
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${DSRL_CTEST_ARGS:-}
rc=$?
set -e
# Say which tests were skipped and why (GPU tests on a machine without a GPU).
log="$build/Testing/Temporary/LastTest.log"
if [ -f "$log" ] && grep -q "GPU test skipped" "$log"; then
    n=$(grep -c "GPU test skipped" "$log")
    echo "[test] $n GPU test(s) skipped: no CUDA device visible on this machine"
fi
tested=$(date +%s)
# Fuzzing: each harness for at least 30 s in CI (docs/fuzzing.md).
fuzz_seconds=${DSRL_FUZZ_SECONDS:-30}
fuzz_rc=0
if [ "$fuzz_seconds" -gt 0 ]; then
    bash scripts/fuzz.sh "$fuzz_seconds" || fuzz_rc=$?
fi
end=$(date +%s)
echo "[test] configure $((configured - start))s, build $((built - configured))s, tests $((tested - built))s," \
     "fuzz $((end - tested))s, total $((end - start))s"
if [ "$fuzz_rc" -ne 0 ]; then
    echo "[test] FAILED: fuzzing found a problem (above; inputs in fuzz-findings/)"
    [ "$rc" -eq 0 ] && rc=$fuzz_rc
fi
if [ "$format_rc" -ne 0 ]; then
    echo "[test] FAILED: unformatted sources (listed above; fix with bash scripts/format.sh)"
    [ "$rc" -eq 0 ] && rc=$format_rc
fi
exit $rc
