#!/usr/bin/env bash
# Issue 11 in one command on a machine with several GPUs (one MPI process per GPU):
#   1. the NCCL collective tests on N ranks and dsrl_bench_comm at 256 MiB (bus bandwidth);
#   2. configs/single_gpu.yaml on 1 GPU and data-parallel on N GPUs with the same global batch: SFT and GRPO
#      step-1 figures side by side, tokens/s and scaling efficiency;
#   3. SIGKILL one rank in the middle of a GRPO step (tests/trainer/kill_rank_test.sh on GPUs): the job must end
#      by itself within dist.timeout_s, saying which rank died; then --resume auto finishes it;
#   4. issue 21 on GPUs: dsrl_bench_moe (one MoE layer, expert parallel vs replicated over NCCL all-to-all-v, outputs
#      compared), dsrl_bench_zero (memory per rank at ZeRO 0/1/2), dsrl_bench_comm's all_to_all_v table at
#      DeepSeek-V3.2's hidden size; with 4+ GPUs also the CPU tests' ZeRO and expert-parallel jobs
#      (tests/trainer/zero_test.sh, expert_parallel_test.sh: 2 and 4 ranks, one GPU each); a checkpoint resumed on
#      another number of GPUs (tests/trainer/reshard_test.sh, 1 and 2 ranks).
#   bash scripts/multi_gpu_test.sh          # N = number of visible GPUs; logs in $OUT (or build-gpu/multi_gpu)
# On one GPU it runs what one GPU can: the collective tests and bench on 1 rank and the 1-GPU baseline of step 2
# (steps 2's N-GPU run and step 3 need 2+ GPUs: NCCL takes one GPU per rank).
# Environment: DSRL_MGPU_SFT_STEPS (20), DSRL_MGPU_RL_STEPS (3): steps of the 1-GPU / N-GPU comparison.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${DSRL_BUILD_DIR:-build-gpu}
logs=${OUT:-$build/multi_gpu}
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
n=$(nvidia-smi -L | wc -l)
echo "[mgpu] $n GPUs"; nvidia-smi -L | tee "$logs/gpus.txt"
nvidia-smi topo -m >"$logs/topo.txt" 2>&1 || true
bash scripts/setup.sh >"$logs/setup.log" 2>&1 || { tail -20 "$logs/setup.log"; exit 1; }
python=$(readlink -f "$root/.venv")/bin/python
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSRL_WITH_CUDA=ON -DDSRL_PYTHON="$python" \
    >"$logs/configure.log" 2>&1 || { tail -30 "$logs/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target dsrl_train dsrl_tool dsrl_bench_comm dsrl_bench_moe dsrl_bench_zero dsrl_dist_gpu_tests >"$logs/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$logs/build.log" | head -40; exit 1; }
bin=$(dirname "$(find "$build" -name dsrl_train -type f -perm -u+x | head -1)")
tests_bin=$(find "$build" -name dsrl_dist_gpu_tests -type f -perm -u+x | head -1)
status=0
mpi=(mpirun --oversubscribe -np "$n" -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS=4)

# 1. Collectives.
if timeout 120 "${mpi[@]}" "$tests_bin" --gtest_color=no >"$logs/nccl_tests.log" 2>&1; then
    echo "[mgpu] NCCL tests on $n ranks: $(grep -c '^\[       OK' "$logs/nccl_tests.log") OK lines, passed"
else
    echo "[mgpu] NCCL tests on $n ranks FAILED"; tail -30 "$logs/nccl_tests.log"; status=1
fi
timeout 120 "${mpi[@]}" "$bin/dsrl_bench_comm" --device cuda --min-size 256M --max-size 256M --iters 20 \
    >"$logs/bench_comm.txt" 2>&1 || status=1
cat "$logs/bench_comm.txt"

# 2. One GPU vs N GPUs, same global batch.
sft=${DSRL_MGPU_SFT_STEPS:-20}
rl=${DSRL_MGPU_RL_STEPS:-3}
job=(--config configs/single_gpu.yaml --set sft.steps=$sft --set trainer.total_steps=$rl --set trainer.eval_prompts=0
     --set trainer.checkpoint.every_steps=0 --set trainer.log_every=1)
timeout 300 mpirun --oversubscribe -np 1 "$bin/dsrl_train" "${job[@]}" --set run.output_dir="$logs/one" \
    --set trainer.micro_batch_size=16 --set rollout.prompts_per_step=16 >"$logs/one.log" 2>&1 || { status=1; tail -20 "$logs/one.log"; }
if [ "$n" -ge 2 ]; then
    timeout 300 "${mpi[@]}" "$bin/dsrl_train" "${job[@]}" --set run.output_dir="$logs/many" \
        --set trainer.micro_batch_size=$((16 / n)) --set rollout.prompts_per_step=$((16 / n)) >"$logs/many.log" 2>&1 ||
        { status=1; tail -20 "$logs/many.log"; }
fi
"$python" - "$logs/one/metrics.jsonl" "$logs/many/metrics.jsonl" "$n" <<'PY' | tee "$logs/scaling.txt"
import json, sys
def load(p):
    try:
        return [json.loads(l) for l in open(p)]
    except OSError:
        return []
one, many, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
def pick(rows, stage, step):
    return next((r for r in rows if r["stage"] == stage and r["step"] == step), {})
for stage, keys in (("sft", ("loss", "grad_norm")), ("grpo", ("entropy_mean", "grad_norm", "policy_loss", "kl_mean"))):
    a, b = pick(one, stage, 1), pick(many, stage, 1)
    for k in keys:
        if k in a and k in b:
            rel = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
            print(f"{stage} step 1 {k}: 1 GPU {a[k]:.6g}, {n} GPUs {b[k]:.6g} (rel diff {rel:.1e})")
if not many:
    for stage, key in (("sft", "loss"), ("grpo", "grad_norm")):
        a = pick(one, stage, 1)
        if key in a:
            print(f"{stage} step 1 {key}: 1 GPU {a[key]:.6g}")
def rate(rows, stage, key):
    xs = [r[key] for r in rows if r["stage"] == stage and key in r][1:]  # the first step warms up
    return sum(xs) / len(xs) if xs else float("nan")
t1, tn = rate(one, "grpo", "tokens_per_s"), rate(many, "grpo", "tokens_per_s")
s1, sn = rate(one, "grpo", "seconds"), rate(many, "grpo", "seconds")
if many:
    print(f"grpo: 1 GPU {t1:.0f} tok/s ({s1:.2f} s/step), {n} GPUs {tn:.0f} tok/s ({sn:.2f} s/step): "
          f"speed-up {tn / t1:.2f}x, scaling efficiency {tn / t1 / n:.0%} (steps 2..)")
else:
    print(f"grpo: 1 GPU {t1:.0f} tok/s ({s1:.2f} s/step), steps 2.. (the N-GPU side needs 2+ GPUs)")
PY

# 3. Kill one rank mid-step (2 ranks, one GPU each, the embedded tiny model), then resume: the CPU test's script.
if [ "$n" -lt 2 ]; then
    echo "[mgpu] killed-rank test skipped: it needs 2 GPUs (this machine has $n)"
elif timeout 300 bash tests/trainer/kill_rank_test.sh "$bin/dsrl_train" mpirun >"$logs/kill_rank.log" 2>&1; then
    echo "[mgpu] killed rank: $(tail -1 "$logs/kill_rank.log")"
else
    echo "[mgpu] killed-rank test FAILED"; tail -30 "$logs/kill_rank.log"; status=1
fi
# 4. Expert parallelism and ZeRO over NCCL.
if [ "$n" -lt 2 ]; then
    echo "[mgpu] expert-parallel and ZeRO runs skipped: they need 2 GPUs (this machine has $n)"
else
    for bench in "dsrl_bench_moe --device cuda --tokens 4096 --hidden 2048 --inter 1024 --experts $((8 * n)) --topk 8" \
                 "dsrl_bench_zero --device cuda --hidden 1024 --layers 8 --experts $((4 * n)) --vocab 32768" \
                 "dsrl_bench_comm --device cuda --max-size 1K --moe-hidden 7168 --moe-tokens 1024,4096,16384"; do
        name=${bench%% *}
        if timeout 600 "${mpi[@]}" "$bin/"$bench >"$logs/$name.log" 2>&1; then
            echo "[mgpu] $name:"; tail -8 "$logs/$name.log"
        else
            echo "[mgpu] $name FAILED"; tail -30 "$logs/$name.log"; status=1
        fi
    done
    if [ "$n" -ge 4 ]; then
        for t in zero_test expert_parallel_test; do
            if timeout 900 bash "tests/trainer/$t.sh" "$bin/dsrl_train" mpirun "$python" >"$logs/$t.log" 2>&1; then
                echo "[mgpu] $t: $(grep -c '^ok' "$logs/$t.log") comparisons ok"
            else
                echo "[mgpu] $t FAILED"; tail -30 "$logs/$t.log"; status=1
            fi
        done
    else
        echo "[mgpu] ZeRO / expert-parallel job tests skipped: their 4-rank runs need 4 GPUs (this machine has $n)"
    fi
    # Resuming on another layout: 2 GPUs -> 1 and 1 -> 2 (ZeRO 1, EP 2), the DSA stream (tests/trainer/reshard_test.sh).
    if timeout 900 bash tests/trainer/reshard_test.sh "$bin/dsrl_train" mpirun "$python" >"$logs/reshard.log" 2>&1; then
        echo "[mgpu] reshard: $(tail -1 "$logs/reshard.log")"
    else
        echo "[mgpu] reshard FAILED"; tail -30 "$logs/reshard.log"; status=1
    fi
    # Disaggregated RL (issue 22): rollout and trainer ranks on their own GPUs reproduce the colocated job; records
    # over MPI, weights by NCCL broadcast. Its runs use 2, 3 and 4 ranks.
    if [ "$n" -ge 4 ]; then
        if timeout 900 bash tests/trainer/disaggregated_test.sh "$bin/dsrl_train" "$bin/dsrl_tool" mpirun "$python" \
            >"$logs/disaggregated.log" 2>&1; then
            echo "[mgpu] disaggregated:"; grep -E "within|PASS" "$logs/disaggregated.log"
        else
            echo "[mgpu] disaggregated FAILED"; tail -30 "$logs/disaggregated.log"; status=1
        fi
    else
        echo "[mgpu] disaggregated test skipped: its 4-rank run needs 4 GPUs (this machine has $n)"
    fi
fi
[ "$status" = 0 ] && echo "[mgpu] all passed" || echo "[mgpu] FAILURES"
exit $status
