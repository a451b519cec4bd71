#!/usr/bin/env bash
# A rank dies mid-step (issue 11 item 3, on CPU ranks; scripts/multi_gpu_test.sh does the same on GPUs): run a
# 2-rank job that checkpoints every step, SIGKILL rank 1 while a GRPO step runs, and require that the whole job
# ends by itself within dist.timeout_s (+ slack), non-zero, saying which rank died; then `--resume auto` on 2
# ranks continues from the last complete checkpoint and finishes the job.
# Usage: kill_rank_test.sh path/to/dsrl_train MPIEXEC
set -u
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -n "${launcher:-}" ] && kill -9 "$launcher" 2>/dev/null' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info
timeout_s=20
job=(--set 'run.stages=[grpo]' --set trainer.total_steps=8 --set trainer.checkpoint.every_steps=1
     --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=24
     --set trainer.eval_prompts=0 --set dist.timeout_s=$timeout_s --set "run.output_dir=$tmp/run")
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" >"$tmp/run.log" 2>&1 &
launcher=$!
# Wait for the step-2 checkpoint, then kill rank 1 (found by its Open MPI rank variable) during step 3.
for _ in $(seq 1 600); do
    [ "$(cat "$tmp/run/checkpoints/latest" 2>/dev/null)" = "step-00000002" ] && break
    sleep 0.1
done
[ "$(cat "$tmp/run/checkpoints/latest" 2>/dev/null)" = "step-00000002" ] ||
    { echo "FAIL: no step-2 checkpoint within 60 s"; cat "$tmp/run.log"; exit 1; }
victim=""
for pid in $(pgrep -f "$bin"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$pid; fi
done
[ -n "$victim" ] || { echo "FAIL: rank 1's process not found"; exit 1; }
start=$(date +%s%N)
kill -9 "$victim"
timeout $((timeout_s + 30)) tail --pid="$launcher" -f /dev/null
wait "$launcher"
rc=$?
launcher=""
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "--- killed rank 1 (pid $victim) during step 3: the job exited $rc after ${elapsed_ms} ms"
grep -iE "rank 1|signal 9|killed|timeout|error" "$tmp/run.log" | head -5
[ "$rc" -ne 0 ] || { echo "FAIL: the job exited 0 after losing a rank"; exit 1; }
[ "$elapsed_ms" -le $(( (timeout_s + 10) * 1000 )) ] || { echo "FAIL: the job took ${elapsed_ms} ms to end"; exit 1; }
pgrep -f "$tmp/run" >/dev/null && { echo "FAIL: processes of the killed job are still running"; exit 1; }
grep -qiE "rank 1.*(signal 9|killed)|(signal 9|killed).*rank 1|exited on signal 9" "$tmp/run.log" ||
    { echo "FAIL: no line says that rank 1 died"; cat "$tmp/run.log"; exit 1; }
latest=$(cat "$tmp/run/checkpoints/latest")
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --resume auto >"$tmp/resume.log" 2>&1 ||
    { echo "FAIL: the resumed run failed"; cat "$tmp/resume.log"; exit 1; }
grep -m1 "resuming from" "$tmp/resume.log"
grep -q "resuming from .*$latest" "$tmp/resume.log" || { echo "FAIL: did not resume from $latest"; exit 1; }
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000008" ] || { echo "FAIL: the resumed job did not finish"; exit 1; }
echo "ok: the job ended ${elapsed_ms} ms after rank 1 died; resumed from $latest and finished step 8"
