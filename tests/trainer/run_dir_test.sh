#!/usr/bin/env bash
# One job per run directory (issue 26), with real dsrl_train jobs on 2 MPI ranks:
#  1. a second job on a directory a running job holds waits run.lock_wait_s, then refuses naming the holder
#     (host and pid of the first job's rank 0), and the first job runs on untouched;
#  2. a third job started with a long lock_wait_s waits while the first runs and starts once it is killed;
#  3. a kill between the write of `latest.tmp.<pid>` and its rename (DSRL_FAULT_KILL=before_latest_rename)
#     leaves the temporary file; `--resume auto` removes it with one warning and finishes the job, and nothing
#     temporary is left in the checkpoint directory;
#  4. a fresh start (no --resume) where an earlier job left checkpoints (or, 5, only its metrics) is refused, saying
#     what to do; run.overwrite=true deletes them and starts over;
#  5. `--resume auto` of a job killed before its first checkpoint starts fresh without repeating its metrics rows.
# Usage: run_dir_test.sh path/to/dsrl_train MPIEXEC
set -u
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
first=""
third=""
cleanup() {
    for p in $first $third; do pkill -9 -P "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }
job=(--set 'run.stages=[grpo]' --set rollout.prompts_per_step=2 --set rollout.group_size=2
     --set rollout.max_new_tokens=8 --set trainer.eval_prompts=0 --set "run.output_dir=$tmp/run")

# 1. The first job runs long (it is killed below); wait until it holds the lock (the holder is recorded).
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set trainer.total_steps=100000 \
    --set trainer.checkpoint.every_steps=0 >"$tmp/first.log" 2>&1 &
first=$!
for _ in $(seq 1 600); do grep -q "pid=" "$tmp/run/.dsrl.lock" 2>/dev/null && break; sleep 0.1; done
holder=$(cat "$tmp/run/.dsrl.lock" 2>/dev/null)
[[ "$holder" == *pid=* ]] || fail "the first job recorded no holder in $tmp/run/.dsrl.lock"
echo "first job holds the run directory: $holder"
t0=$(date +%s%N)
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set trainer.total_steps=1 --set run.lock_wait_s=2 \
    >"$tmp/second.log" 2>&1 && fail "the second job ran on a locked run directory"
waited_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "is in use by another dsrl job (${holder% started=*}" "$tmp/second.log" ||
    fail "the refusal does not name the holder '${holder% started=*}'"
grep -m1 "is in use by another dsrl job" "$tmp/second.log"
[ "$waited_ms" -ge 2000 ] || fail "the second job gave up after ${waited_ms} ms, before run.lock_wait_s = 2 s"
kill -0 "$first" 2>/dev/null || fail "the first job did not survive the second's attempt"
echo "ok: the second job waited ${waited_ms} ms and was refused, naming the holder"

# 2. A third job waits for the lock; killing the first job (mpirun and its ranks) lets it start (--resume auto: the
#    first job left metrics rows but no checkpoint, so it runs from the start and replaces them; see 5).
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set trainer.total_steps=2 --set run.lock_wait_s=120 \
    --resume auto >"$tmp/third.log" 2>&1 &
third=$!
for _ in $(seq 1 600); do grep -q "is locked by another job" "$tmp/third.log" && break; sleep 0.1; done
grep -q "is locked by another job" "$tmp/third.log" || fail "the third job did not report that it waits"
pkill -9 -P "$first"
kill -9 "$first"
wait "$first" 2>/dev/null
first=""
wait "$third" || fail "the third job failed after the first was killed"
third=""
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000002" ] || fail "the third job did not finish"
echo "ok: the third job waited for the first and ran once it was killed"

# 3. Killed between writing latest.tmp.<pid> and renaming it.
rm -rf "$tmp/run"
job3=("${job[@]}" --set trainer.total_steps=4 --set trainer.checkpoint.every_steps=1)
DSRL_FAULT_KILL=before_latest_rename:3 "$mpiexec" --oversubscribe -np 2 "$bin" "${job3[@]}" >"$tmp/killed.log" 2>&1 &&
    fail "the job killed before the rename of latest exited 0"
left=$(ls "$tmp/run/checkpoints" | grep '^latest\.tmp\.')
[ -n "$left" ] || fail "the kill left no latest.tmp.<pid> (the fault point did not fire where expected)"
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000002" ] || fail "latest moved although its rename never ran"
"$mpiexec" --oversubscribe -np 2 "$bin" "${job3[@]}" --resume auto >"$tmp/resume.log" 2>&1 || fail "the resume failed"
[ "$(grep -c "removing .*$left" "$tmp/resume.log")" = 1 ] || fail "no single warning about $left"
grep -m1 "removing .*$left" "$tmp/resume.log"
leftovers=$(ls -a "$tmp/run/checkpoints" "$tmp/run" | grep -E '\.tmp($|[.-])')
[ -z "$leftovers" ] || fail "temporary files left after the resume: $leftovers"
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000004" ] || fail "the resumed job did not finish"
echo "ok: $left was removed by the resume, which finished the job"

# 4. A fresh start (no --resume) on the earlier job's checkpoints is refused; run.overwrite=true starts over.
"$mpiexec" --oversubscribe -np 2 "$bin" "${job3[@]}" >"$tmp/fresh.log" 2>&1 && fail "a fresh start overwrote a job's checkpoints"
grep -q "holds the checkpoints of an earlier job (latest: step-00000004).*--resume auto.*run.overwrite=true" "$tmp/fresh.log" ||
    fail "the refusal of a fresh start does not say why and what to do"
[ "$(cat "$tmp/run/checkpoints/latest")" = "step-00000004" ] || fail "the refused fresh start changed latest"
"$mpiexec" --oversubscribe -np 2 "$bin" "${job3[@]}" --set trainer.total_steps=2 --set run.overwrite=true \
    >"$tmp/overwrite.log" 2>&1 || fail "run.overwrite=true did not start over"
[ "$(ls "$tmp/run/checkpoints" | grep -c '^step-')" = 2 ] && [ "$(cat "$tmp/run/checkpoints/latest")" = step-00000002 ] ||
    fail "run.overwrite=true left the earlier job's checkpoints: $(ls "$tmp/run/checkpoints")"
[ "$(grep -c '"stage":"grpo"' "$tmp/run/metrics.jsonl")" = 2 ] || fail "run.overwrite=true kept the earlier metrics rows"
echo "ok: a fresh start on an earlier job's checkpoints was refused; run.overwrite=true started over"

# 5. Killed before its first checkpoint (every_steps 0: only at the end); --resume auto starts fresh and the
#    rows of the killed job's steps are not kept twice.
rm -rf "$tmp/run"
job5=("${job[@]}" --set trainer.total_steps=3 --set trainer.checkpoint.every_steps=0)
DSRL_FAULT_KILL=step_start:3 "$mpiexec" --oversubscribe -np 2 "$bin" "${job5[@]}" >"$tmp/early.log" 2>&1 &&
    fail "the job killed at step 3 exited 0"
[ "$(grep -c '"stage":"grpo"' "$tmp/run/metrics.jsonl")" = 2 ] || fail "the killed job did not write 2 rows"
# A fresh start there (no --resume) would append its rows to the killed job's: refused, naming the file.
"$mpiexec" --oversubscribe -np 2 "$bin" "${job5[@]}" >"$tmp/early_fresh.log" 2>&1 &&
    fail "a fresh start appended to an earlier job's metrics"
grep -q "run/metrics.jsonl is an earlier job's output (it left no checkpoint).*--resume auto.*run.overwrite=true" \
    "$tmp/early_fresh.log" || fail "the refusal of a fresh start over an earlier job's metrics does not say why"
[ "$(grep -c '"stage":"grpo"' "$tmp/run/metrics.jsonl")" = 2 ] || fail "the refused fresh start changed the metrics"
"$mpiexec" --oversubscribe -np 2 "$bin" "${job5[@]}" --resume auto >"$tmp/early_resume.log" 2>&1 ||
    fail "the resume of a job without checkpoints failed"
[ "$(grep -c '"stage":"grpo"' "$tmp/run/metrics.jsonl")" = 3 ] ||
    fail "metrics.jsonl has $(grep -c '"stage":"grpo"' "$tmp/run/metrics.jsonl") GRPO rows after the resume, want 3"
echo "ok: a job killed before its first checkpoint resumed from scratch with one metrics row per step"
