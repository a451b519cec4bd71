#!/usr/bin/env bash
# The test command (README, CI): sets up if needed, configures (Release, ccache, precompiled header), builds,
# and runs every test with CTest: unit tests, mpirun tests (-np 2 and 3), the transformers parity tests.
# GPU tests are skipped with a printed reason on machines without a GPU. Checks that every C++/CUDA source
# matches .clang-format (scripts/format.sh --check). Exits non-zero on any failure, an unformatted file included.
# Environment: DSRL_BUILD_DIR (default build), DSRL_CTEST_ARGS (extra ctest arguments, e.g. "-L cpu").
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
end=$(date +%s)
echo "[test] configure $((configured - start))s, build $((built - configured))s, tests $((end - built))s, total $((end - start))s"
if [ "$format_rc" -ne 0 ]; then
    echo "[test] FAILED: unformatted sources (listed above; fix with bash scripts/format.sh)"
    [ "$rc" -eq 0 ] && rc=$format_rc
fi
exit $rc
