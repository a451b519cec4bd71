#!/usr/bin/env bash
# A rank dies mid-step (issue 11 item 3, on CPU ranks; scripts/multi_gpu_test.sh does the same on GPUs): a
# 2-rank job that checkpoints every step; rank 1 SIGKILLs itself as job step 3 starts (DSRL_FAULT_KILL, so the
# kill lands inside the step whatever the machine's speed — no polling race). The whole job must end by itself
# within dist.timeout_s (+ slack), non-zero, saying which rank died; then `--resume auto` on 2 ranks continues
# from the last complete checkpoint (step 2) and finishes the job.
# Usage: kill_rank_test.sh path/to/dsrl_train MPIEXEC
set -u
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info
timeout_s=20
job=(--set 'run.stages=[grpo]' --set trainer.total_steps=8 --set trainer.checkpoint.every_steps=1
     --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=24
     --set trainer.eval_prompts=0 --set dist.timeout_s=$timeout_s --set "run.output_dir=$tmp/run")
start=$(date +%s%N)
DSRL_FAULT_KILL=step_start:3:1 timeout $((timeout_s + 60)) "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" \
    >"$tmp/run.log" 2>&1
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
grep -q "kills itself at step_start of job step 3" "$tmp/run.log" ||
    { echo "FAIL: rank 1 did not reach the fault point"; cat "$tmp/run.log"; exit 1; }
echo "--- rank 1 killed itself as step 3 started: the job exited $rc, ${elapsed_ms} ms after it began"
grep -iE "rank 1|signal 9|killed|timeout|error" "$tmp/run.log" | head -5
[ "$rc" -ne 0 ] || { echo "FAIL: the job exited 0 after losing a rank"; exit 1; }
[ "$rc" -ne 124 ] || { echo "FAIL: the job did not end by itself"; cat "$tmp/run.log"; exit 1; }
[ "$elapsed_ms" -le $(( (timeout_s + 30) * 1000 )) ] || { echo "FAIL: the job took ${elapsed_ms} ms to end"; exit 1; }
pgrep -f "$tmp/run" >/dev/null && { echo "FAIL: processes of the killed job are still running"; exit 1; }
grep -qiE "rank 1.*(signal 9|killed)|(signal 9|killed).*rank 1|exited on signal 9" "$tmp/run.log" ||
    { echo "FAIL: no line says that rank 1 died"; cat "$tmp/run.log"; exit 1; }
latest=$(cat "$tmp/run/checkpoints/latest")
[ "$latest" = "step-00000002" ] || { echo "FAIL: latest is '$latest', want step-00000002"; exit 1; }
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --resume auto >"$tmp/resume.log" 2>&1 ||
    { echo "FAIL: the resumed run failed"; cat "$tmp/resume.log"; exit 1; }
grep -m1 "resuming from" "$tmp/resume.log"
grep -q "resuming from .*$latest" "$tmp/resume.log" || { echo "FAIL: did not resume from $latest"; exit 1; }
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000008" ] || { echo "FAIL: the resumed job did not finish"; exit 1; }
echo "ok: the job ended by itself after rank 1 died (${elapsed_ms} ms in all); resumed from $latest and finished step 8"
