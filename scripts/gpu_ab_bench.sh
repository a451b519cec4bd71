#!/usr/bin/env bash
# A/B of the rollout engine's decode step on one GPU machine in one device command: the working tree against a base
# commit, both built there side by side and run alternately (machines of one kind differ by several µs a step, so
# only figures from one run compare). What a kernel change is measured with (docs/kernel_notes.md).
#   bash scripts/gpu_ab_bench.sh --pack [REF]   # here, before the device call: REF (default HEAD) as .ab-base.tar.gz
#   bash scripts/gpu_ab_bench.sh                # there: builds both, runs the checks and the A/B
# On the GPU machine: carry [".device-kit", ".device-deps", ".ab-base.tar.gz"] (the archive is git-ignored, so it
# travels only when carried) and start with source .device-kit/env.sh && source .device-deps/env.sh && (scripts/
# gpu_test.sh says why). Knobs: DSRL_AB_TESTS (gtest binaries:filters, run on the new
# tree first; default the sparse attention, model, MoE and sampling kernels' tests), DSRL_AB_ROUNDS (default 2),
# DSRL_AB_ARGS (the bench's arguments after --model), DSRL_AB_NCU=1 (source-level Nsight Compute of the new tree's
# decode kernels, summarized by bench/ncu_source.py), DSRL_AB_NCU_KERNELS (its kernel-name regex).
# Everything lands in one archive, $OUT/ab.tar.gz (the device tool returns a handful of files, not a folder of logs);
# the figures also go to stdout.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
if [ "${1:-}" = "--pack" ]; then
    git archive --format=tar.gz -o .ab-base.tar.gz "${2:-HEAD}" && echo "packed ${2:-HEAD} as .ab-base.tar.gz"
    exit $?
fi
[ -f .ab-base.tar.gz ] || { echo "no .ab-base.tar.gz: run bash scripts/gpu_ab_bench.sh --pack REF here first" >&2; exit 2; }
t0=$(date +%s)
logs=$(mktemp -d)/ab
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/ab.tar.gz" -C "$(dirname "$logs")" ab; }
bash scripts/setup.sh >"$logs/setup.log" 2>&1 || { tail -20 "$logs/setup.log"; exit 1; }
python=$(readlink -f "$root/.venv")/bin/python
configure() { cmake -S "$1" -B "$1/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_WITH_CUDA=ON -DDSRL_PYTHON="$python"; }
base=$(mktemp -d)/base
mkdir -p "$base" && tar xzf .ab-base.tar.gz -C "$base"
jobs=$(nproc)
(configure "$base" >"$logs/base_configure.log" 2>&1 &&
    cmake --build "$base/build-gpu" -j $((jobs / 3 + 1)) --target dsrl_bench_rollout >"$logs/base_build.log" 2>&1) &
base_pid=$!
tests=${DSRL_AB_TESTS:-"dsrl_dsa_gpu_tests:SparseMlaSimtTest.*:ModelGpuTest.*:LinearKernelTest.* dsrl_moe_gpu_tests:* dsrl_rollout_gpu_tests:SamplingKernelTest.*"}
targets="dsrl_tool dsrl_bench_rollout"
for t in $tests; do targets="$targets ${t%%:*}"; done
configure . >"$logs/configure.log" 2>&1 || { tail -30 "$logs/configure.log"; exit 1; }
# shellcheck disable=SC2086
cmake --build build-gpu -j $((jobs - jobs / 3)) --target $targets >"$logs/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$logs/build.log" | head -20; exit 1; }
echo "[ab] new tree built at $(($(date +%s) - t0)) s"
status=0
for t in $tests; do
    bin=${t%%:*} filter=${t#*:}
    build-gpu/bin/"$bin" --gtest_filter="$filter" >"$logs/$bin.log" 2>&1 || status=1
    echo "[ab] $bin ($filter): $(grep -E '^\[  (PASSED|FAILED)' "$logs/$bin.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED  \]" "$logs/$bin.log" | head -10
done
wait "$base_pid" || { echo "[ab] the base failed to build (see base_build.log)"; tail -20 "$logs/base_build.log"; pack; exit 1; }
model=$(mktemp -d)/single_gpu
build-gpu/bin/dsrl_tool init --config configs/single_gpu.yaml --out "$model" >/dev/null
args=${DSRL_AB_ARGS:-"--device cuda --batches 256 --hf 0 --baselines 0 --probe 20 --new-tokens 128"}
for round in $(seq "${DSRL_AB_ROUNDS:-2}"); do
    for side in base new; do
        bin=build-gpu/bin/dsrl_bench_rollout
        [ "$side" = base ] && bin=$base/build-gpu/bin/dsrl_bench_rollout
        # shellcheck disable=SC2086
        "$bin" --model "$model" $args >"$logs/bench_${side}_$round.txt" 2>>"$logs/bench.err" || status=1
        echo "[ab] round $round $side: $(grep -E 'device \(CUDA events\)' "$logs/bench_${side}_$round.txt" | sed 's/^ *//')"
    done
done
# The graphed step's timeline of both trees (48 new tokens: steady dense steps), by bench/step_timeline.py.
for side in base new; do
    bin=build-gpu/bin/dsrl_bench_rollout
    [ "$side" = base ] && bin=$base/build-gpu/bin/dsrl_bench_rollout
    "$bin" --model "$model" --device cuda --batches 256 --hf 0 --baselines 0 --compare 0 --profile 256 \
        --profile-graphs 1 --new-tokens 48 --trace "$logs/timeline_$side.json" >"$logs/profile_$side.log" 2>&1 &&
        "$python" bench/step_timeline.py "$logs/timeline_$side.json" --head 0 --tail 40 >"$logs/timeline_$side.txt" &&
        gzip "$logs/timeline_$side.json" || echo "[ab] no timeline for $side"
done
pack
if [ "${DSRL_AB_NCU:-0}" = 1 ]; then
    ncu_bin=$(command -v ncu || find /usr/local -maxdepth 3 -path '*/cuda*/bin/ncu' 2>/dev/null | head -1 || true)
    if [ -n "$ncu_bin" ]; then
        # shellcheck disable=SC2086
        DSRL_PDL=0 timeout 200 "$ncu_bin" --kernel-name-base function --launch-skip 2000 --launch-count 24 \
            --kernel-name "regex:${DSRL_AB_NCU_KERNELS:-routed_|route_tile|linear_kernel|row_proj_tile|norm_kernel|sample_kernel|sparse_mla_mma}" \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
            --section SourceCounters --import-source yes -f -o "$logs/ncu" \
            build-gpu/bin/dsrl_bench_rollout --model "$model" $args --compare 0 --profile 256 --probe 0 \
            >"$logs/ncu_run.log" 2>&1 &&
            "$ncu_bin" --import "$logs/ncu.ncu-rep" --csv --page raw >"$logs/ncu_raw.csv" &&
            "$python" bench/ncu_summary.py "$logs/ncu_raw.csv" >"$logs/ncu_summary.txt" &&
            "$ncu_bin" --import "$logs/ncu.ncu-rep" --csv --page source --print-source sass >"$logs/ncu_source.csv" &&
            "$python" bench/ncu_source.py "$logs/ncu_source.csv" | tee "$logs/ncu_source.txt" ||
            echo "[ab] ncu failed (see ncu_run.log)"
        rm -f "$logs/ncu.ncu-rep" "$logs/ncu_raw.csv"
        gzip -f "$logs/ncu_source.csv" 2>/dev/null || true
    else
        echo "[ab] ncu not found"
    fi
    pack
fi
echo "[ab] done at $(($(date +%s) - t0)) s, status $status"
exit $status
