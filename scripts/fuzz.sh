#!/usr/bin/env bash
# Runs every libFuzzer harness of tests/fuzz (docs/fuzzing.md) for SECONDS each (default 60), two at a time.
#   bash scripts/fuzz.sh [SECONDS]
# Configures and builds build-fuzz (clang, -DDSRL_FUZZ=ON: ASan + UBSan + libFuzzer) when needed, replays each
# harness's regression inputs (tests/fuzz/<name>/regressions/), then fuzzes it from a temporary copy of its corpus
# (tests/fuzz/<name>/, never modified). Prints per harness: executions, executions per second, PASS or FAIL; a
# finding (crash, sanitizer report, leak, timeout, out-of-memory, unexpected exception) is kept in fuzz-findings/
# and the script exits non-zero. scripts/test.sh runs it with 30 seconds (CI).
# Environment: DSRL_FUZZ_BUILD_DIR (default build-fuzz), DSRL_FUZZ_JOBS (harnesses at once, default 2),
# DSRL_FUZZ_ONLY (space-separated harness names, default all), DSRL_FUZZ_FINDINGS (default fuzz-findings).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}
build=${DSRL_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${DSRL_FUZZ_JOBS:-2}
findings=${DSRL_FUZZ_FINDINGS:-$root/fuzz-findings}
say() { printf '[fuzz] %s\n' "$*"; }

# Harness name and -max_len (bytes): larger than every seed of its corpus, small enough to keep runs fast.
declare -A max_len=(
    [safetensors]=4096 [rollout_record]=4096 [indexer_sets]=512 [checkpoint_state]=2048 [job_config]=8192
    [prompt_rows]=4096 [tokenizer_json]=4096 [chat_output]=2048)
names=(${DSRL_FUZZ_ONLY:-safetensors rollout_record indexer_sets checkpoint_state job_config prompt_rows
       tokenizer_json chat_output})

# --- Build (only the harnesses and the libraries they link) ----------------------------------------------------------
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
if [ ! -f "$build/CMakeCache.txt" ]; then
    command -v clang++ >/dev/null || { say "error: clang++ not found (bash scripts/setup.sh installs clang)"; exit 1; }
    python=$(readlink -f "$root/.venv")/bin/python
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_FUZZ=ON \
        -DDSRL_PYTHON="$python" >/dev/null
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/dsrl_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
if ! cmake --build "$build" -j "$(nproc)" --target dsrl_fuzzers >"$work/build.log" 2>&1; then
    grep -vE '^\[[0-9]+/[0-9]+\] ' "$work/build.log" | tail -40
    say "error: the fuzz build failed"
    exit 1
fi
say "build $(( $(date +%s) - start ))s"

# --- Run ----------------------------------------------------------------------------------------------------------------
# Sanitizers: stop at the first report (the fuzzer keeps the input); symbolized stacks. One thread each: two
# harnesses share the two cores.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# fuzz_one NAME: replay the regressions, then fuzz; writes $work/NAME.result ("PASS execs exec/s" or "FAIL why").
fuzz_one() {
    local name=$1 bin="$build/bin/fuzz_$1" dir="tests/fuzz/$1" log="$work/$1.log"
    local tmp="$work/$1.tmp" corpus="$work/$1.corpus"
    mkdir -p "$tmp" "$corpus" "$findings"
    cp "$dir"/seed_* "$corpus"/ 2>/dev/null || true
    local regressions=()
    if [ -d "$dir/regressions" ]; then
        mapfile -t regressions < <(find "$dir/regressions" -type f | sort)
        cp "${regressions[@]}" "$corpus"/ 2>/dev/null || true
    fi
    if [ ${#regressions[@]} -gt 0 ] &&
        ! TMPDIR=$tmp "$bin" -rss_limit_mb=2048 -timeout=10 "${regressions[@]}" >"$log" 2>&1; then
        echo "FAIL - - a regression input fails again: log $findings/$name.log" >"$work/$name.result"
        cp "$log" "$findings/$name.log"
        return
    fi
    local rc=0
    TMPDIR=$tmp "$bin" "$corpus" -max_total_time="$seconds" -max_len="${max_len[$name]}" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$findings/$name-" >"$log" 2>&1 || rc=$?
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "PASS ${execs:-?} ${rate:-?}" >"$work/$name.result"
    else
        cp "$log" "$findings/$name.log"
        local input
        input=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
        echo "FAIL ${execs:-?} ${rate:-?} input ${input:-none} log $findings/$name.log" >"$work/$name.result"
    fi
}

say "${#names[@]} harnesses, ${seconds}s each, $jobs at a time"
running=0
for name in "${names[@]}"; do
    [ -x "$build/bin/fuzz_$name" ] || { say "error: no harness $name ($build/bin/fuzz_$name)"; exit 1; }
    fuzz_one "$name" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

failed=0
printf '[fuzz] %-18s %-6s %12s %10s\n' harness result executions exec/s
for name in "${names[@]}"; do
    read -r result execs rate rest <"$work/$name.result" || true
    printf '[fuzz] %-18s %-6s %12s %10s %s\n' "$name" "$result" "$execs" "$rate" "$rest"
    [ "$result" = PASS ] || failed=1
done
if [ "$failed" -ne 0 ]; then
    say "FAILED: findings kept in $findings (reproduce: $build/bin/fuzz_<name> <input>)"
    exit 1
fi
say "all ${#names[@]} harnesses passed"
