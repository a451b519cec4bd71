#!/usr/bin/env bash
# The rollout engine's GPU figures (issue 23) in one device command: builds what it needs in build-gpu, writes the
# single_gpu.yaml model as a checkpoint, runs dsrl_bench_rollout against Hugging Face generate() at batch 1, 64 and
# 256, profiles a decode step (every kernel by name, per step; Chrome traces in $OUT) at each batch of
# DSRL_PROFILE_BATCHES (default 1 and 256; "" skips), then a few GRPO steps of single_gpu.yaml with the continuous and
# the static engine (generated tok/s per step). Also the graphed batch-256 step's timeline (bench/step_timeline.py: the
# replays' kernels under the profiler, what runs outside the graph), with Nsight Compute installed the stalls of its
# small kernels (bench/ncu_summary.py), with Nsight Systems a node-level trace (bench/graph_gaps.py). The bench rows
# also give each batch's device time per step (CUDA events) and the largest graph's back-to-back replay time;
# bench/trace_kernels.py lists the padded step's kernels.
#   bash scripts/gpu_rollout_bench.sh            # on the lent GPU machine: see scripts/gpu_test.sh for the preamble
# Logs and figures go to $OUT when set, else build-gpu/rollout_bench/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${DSRL_BUILD_DIR:-build-gpu}
logs=${OUT:-$build/rollout_bench}
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bash scripts/setup.sh >"$logs/setup.log" 2>&1 || { tail -20 "$logs/setup.log"; exit 1; }
python=$(readlink -f "$root/.venv")/bin/python
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_WITH_CUDA=ON -DDSRL_PYTHON="$python" \
    >"$logs/configure.log" 2>&1 || { tail -30 "$logs/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target dsrl_bench_rollout dsrl_tool dsrl_train dsrl_grpo_gpu_tests dsrl_moe_gpu_tests \
    dsrl_dsa_gpu_tests >"$logs/build.log" 2>&1 || { grep -E "error|FAILED" "$logs/build.log" | head -40; exit 1; }
# The figures count only if the engine is right: its GPU tests first (graphs vs launched kernels vs the static engine,
# graphs after a weight update, autocast forwards after a weight update, the MoE decode kernels).
status=0
for t in "dsrl_grpo_gpu_tests" "dsrl_moe_gpu_tests" "dsrl_dsa_gpu_tests --gtest_filter=ModelGpuTest.*:NormRopeKernelTest.*:SparseMlaSimtTest.*:IndexerKernelTest.*"; do
    # shellcheck disable=SC2086
    "$build/bin/"$t >"$logs/${t%% *}.log" 2>&1 || status=1
    grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|error" "$logs/${t%% *}.log" | head -20 || true
done
if command -v compute-sanitizer >/dev/null; then  # the decode's norm / rotation jobs, attention and paged indexer
    timeout 180 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/bin/dsrl_dsa_gpu_tests" \
        --gtest_filter='NormRopeKernelTest.*:SparseMlaSimtTest.*:IndexerKernelTest.Paged*:IndexerKernelTest.TopkRows*' \
        >"$logs/sanitizer_norm_rope.log" 2>&1 &&
        echo "compute-sanitizer memcheck (NormRopeKernelTest, SparseMlaSimtTest, the paged indexer and top-k): clean" ||
        { echo "compute-sanitizer memcheck (NormRopeKernelTest, SparseMlaSimtTest, the paged indexer and top-k): FAILED"; tail -20 "$logs/sanitizer_norm_rope.log"; status=1; }
fi
model=$(mktemp -d)/single_gpu
"$build/bin/dsrl_tool" init --config configs/single_gpu.yaml --out "$model" >/dev/null
hf_python=${DSRL_HF_PYTHON:-$(command -v python3)}
"$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --batches "${DSRL_ROLLOUT_BATCHES:-1,64,256}" \
    --new-tokens "${DSRL_ROLLOUT_NEW:-128}" --python "$hf_python" 2>"$logs/bench_rollout.err" | tee "$logs/bench_rollout.txt" || { tail -5 "$logs/bench_rollout.err"; exit 1; }
for b in ${DSRL_PROFILE_BATCHES-1 256}; do  # where a decode step's time goes (kernels launched one by one)
    "$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --compare 0 --profile "$b" \
        --new-tokens "${DSRL_ROLLOUT_NEW:-128}" --trace "$logs/decode_trace_b$b.json" 2>>"$logs/bench_rollout.err" |
        tee "$logs/decode_profile_b$b.txt" | grep -A 30 "^profile of" || { tail -5 "$logs/bench_rollout.err"; status=1; }
done
# A training job's rollout (fp32 weights, bf16 autocast): weights cast once per rollout vs in every decode step.
for once in ${DSRL_PROFILE_CAST-1 0}; do
    "$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --compare 0 --profile 64 --autocast 1 \
        --cast-once "$once" --new-tokens "${DSRL_ROLLOUT_NEW:-128}" 2>>"$logs/bench_rollout.err" |
        tee "$logs/decode_profile_autocast_once$once.txt" | grep -A 12 "^profile of" || status=1
done
# The padded step the graphs replay, launched kernel by kernel (their shapes), every kernel with its launching op.
"$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --compare 0 --profile 256 --profile-buckets 1 \
    --new-tokens 24 --trace "$logs/buckets256.json" >/dev/null 2>>"$logs/bench_rollout.err" &&
    "$python" bench/trace_kernels.py "$logs/buckets256.json" --top 40 | tee "$logs/buckets256_kernels.txt" ||
    { echo "the padded step's trace failed"; status=1; }
gzip -f "$logs/buckets256.json" 2>/dev/null || true
# A graphed step's timeline without Nsight Systems: the replays' kernels under the profiler, cut into steps (what
# runs outside the graph, and the gaps).
"$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --batches 256 --compare 0 --profile 256 --profile-graphs 1 \
    --new-tokens 48 --trace "$logs/graphed256.json" >/dev/null 2>>"$logs/bench_rollout.err" &&
    "$python" bench/step_timeline.py "$logs/graphed256.json" | tee "$logs/graphed256_timeline.txt" ||
    { echo "the graphed step's timeline failed"; status=1; }
gzip -f "$logs/graphed256.json" 2>/dev/null || true
# What a batch-256 step's small kernels wait on (Nsight Compute, when installed): one steady step's kernels, summarized.
ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1 || true)
if [ -n "$ncu_bin" ]; then
    DSRL_PDL=0 timeout 300 "$ncu_bin" --kernel-name-base function --launch-skip 2400 --launch-count 60 \
        --kernel-name "regex:norm_kernel|row_proj_tile|route_tile|routed_|sparse_mla_mma|indexer_paged|sample_kernel" \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats -f -o "$logs/ncu256" \
        "$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --batches 256 --hf 0 --baselines 0 --compare 0 \
        --profile 256 --profile-buckets 1 --new-tokens 96 >"$logs/ncu_run.log" 2>&1 &&
        "$ncu_bin" --import "$logs/ncu256.ncu-rep" --csv --page raw >"$logs/ncu256_raw.csv" 2>>"$logs/ncu_run.log" &&
        "$python" bench/ncu_summary.py "$logs/ncu256_raw.csv" | tee "$logs/ncu256_summary.txt" ||
        echo "ncu of the decode step's kernels failed (see $logs/ncu_run.log)"
else
    echo "ncu not found: no per-kernel stall figures"
fi
# A graphed step's device time against its kernels and the gaps between them (Nsight Systems, graph nodes traced).
nsys_bin=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1 || true)
if [ -n "$nsys_bin" ]; then
    timeout 300 "$nsys_bin" profile --trace=cuda --cuda-graph-trace=node --force-overwrite=true -o "$logs/graph256" \
        "$build/bin/dsrl_bench_rollout" --model "$model" --device cuda --batches 256 --hf 0 --baselines 0 \
        --new-tokens "${DSRL_ROLLOUT_NEW:-128}" >"$logs/nsys_run.log" 2>&1 &&
        timeout 200 "$nsys_bin" stats --report cuda_gpu_trace --format csv --output "$logs/graph256" \
            --force-export=true "$logs/graph256.nsys-rep" >"$logs/nsys_stats.log" 2>&1 &&
        "$python" bench/graph_gaps.py "$logs/graph256_cuda_gpu_trace.csv" | tee "$logs/graph_gaps.txt" ||
        echo "nsys trace of the graphed decode failed (see $logs/nsys_*.log)"
    rm -f "$logs/graph256.sqlite" "$logs/graph256_cuda_gpu_trace.csv"
else
    echo "nsys not found: no node-level trace of the graphed decode"
fi
steps=${DSRL_GRPO_STEPS:-4}
# Engines: continuous, static, and continuous-castperstep (rollout.cast_weights_once false: every decode step casts
# the fp32 weights again, the baseline of the cast-once figure).
for engine in ${DSRL_GRPO_ENGINES:-continuous continuous-castperstep static}; do
    extra=()
    [[ $engine == continuous-castperstep ]] && extra=(--set rollout.cast_weights_once=false)
    timeout 300 mpirun --oversubscribe -np 1 "$build/bin/dsrl_train" --config configs/single_gpu.yaml \
        --set 'run.stages=[grpo]' --set trainer.total_steps="$steps" --set trainer.eval_prompts=0 \
        --set trainer.checkpoint.every_steps=0 --set trainer.log_every=1 --set rollout.engine="${engine%%-*}" \
        "${extra[@]}" --set run.output_dir="$logs/grpo_$engine" >"$logs/grpo_$engine.log" 2>&1 ||
        { tail -20 "$logs/grpo_$engine.log"; }
    "$python" - "$logs/grpo_$engine/metrics.jsonl" "$engine" <<'PY' | tee -a "$logs/grpo.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"grpo"' in l]
tps = [r.get("tokens_per_s", 0) for r in rows]
secs = [r.get("seconds", 0) for r in rows]
later = tps[1:] or tps
print(f"GRPO single_gpu.yaml, engine {sys.argv[2]}: generated tok/s per step {[round(t) for t in tps]}, "
      f"mean of steps 2+ {sum(later) / max(len(later), 1):.0f}; seconds per step {[round(s, 2) for s in secs]}")
PY
done
exit $status
