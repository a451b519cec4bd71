#!/usr/bin/env bash
# Stopping a job with a signal (issue 25 item 6), on 2 ranks: every rank finishes its step, a checkpoint is written
# and every process exits 0 — for SIGTERM and SIGINT to scripts/dsrl_mpirun (the launcher wrapper: it passes them to
# mpirun as SIGUSR1, which Open MPI forwards to the ranks), SIGUSR1 to a plain mpirun, and SIGTERM to every rank.
# SIGTERM to a plain mpirun is Open MPI's abort (exit 1; the ranks get SIGTERM after odls_base_sigkill_timeout seconds
# and SIGKILL after as long again): with the grace raised the ranks still checkpoint. After each stop `--resume auto` finishes the job with final weights equal
# to an uninterrupted run's bit for bit.
# Usage: signals_test.sh path/to/dsrl_train MPIEXEC
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
wrapper="$(cd "$(dirname "$0")/../.." && pwd)/scripts/dsrl_mpirun"
tmp=$(mktemp -d)
trap 'pkill -9 -f "$tmp/" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info MPIEXEC=$mpiexec
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -6 "$f"; done; exit 1; }
steps=150
final=$(printf "step-%08d" $steps)
job=(--set 'run.stages=[sft]' --set sft.steps=$steps --set trainer.checkpoint.every_steps=1000
     --set trainer.tensorboard=false)
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$tmp/base" >"$tmp/base.log" 2>&1 ||
    fail "the uninterrupted run failed"
# wait_rows DIR N: until DIR/metrics.jsonl has N rows (at most 60 s)
wait_rows() {
    for _ in $(seq 1 1200); do
        [ "$(wc -l <"$1/metrics.jsonl" 2>/dev/null || echo 0)" -ge "$2" ] && return 0
        sleep 0.05
    done
    return 1
}
# stopped NAME RC WANT_RC: the stopped job's exit code, its checkpoint before the end, then resume and compare.
stopped() {
    local name=$1 rc=$2 want=$3 dir=$tmp/$1
    [ "$rc" = "$want" ] || fail "$name: exit code $rc, expected $want"
    grep -q "stopping after sft step" "$tmp/$name.log" || fail "$name: no 'stopping after' line"
    local at
    at=$(cat "$dir/checkpoints/latest" 2>/dev/null)
    [ -n "$at" ] && [ "$at" \< "$final" ] || fail "$name: no checkpoint before the end (latest '$at')"
    pgrep -f "$dir" >/dev/null && fail "$name: processes are still running"
    "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$dir" --resume auto \
        >"$tmp/$name.resume.log" 2>&1 || fail "$name: the resumed run failed"
    same_steps_and_weights "$tmp/base" "$dir" "$final" >/dev/null || fail "$name: the resumed run differs"
    echo "ok   $name: exit $rc, checkpoint $at, resumed to the same final weights"
}
# 1-2. SIGTERM / SIGINT to dsrl_mpirun. (A background command of a script starts with SIGINT ignored, which a
# shell cannot trap: the wrapper is started with SIGINT restored, as from a terminal.)
for sig in TERM INT; do
    name=wrapper_$sig
    python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
        "$wrapper" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$tmp/$name" >"$tmp/$name.log" 2>&1 &
    pid=$!
    wait_rows "$tmp/$name" 5 || fail "$name: the job did not start"
    kill -$sig $pid
    wait $pid
    stopped $name $? 0
done
# 3. SIGUSR1 to a plain mpirun (what dsrl_mpirun sends; `kill -USR1 <mpirun pid>` by hand).
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$tmp/usr1" >"$tmp/usr1.log" 2>&1 &
pid=$!
wait_rows "$tmp/usr1" 5 || fail "usr1: the job did not start"
kill -USR1 $pid
wait $pid
stopped usr1 $? 0
# 4. SIGTERM to every rank (a scheduler signalling the processes, not the launcher).
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$tmp/ranks" >"$tmp/ranks.log" 2>&1 &
pid=$!
wait_rows "$tmp/ranks" 5 || fail "ranks: the job did not start"
pkill -TERM -f "^$bin .*run.output_dir=$tmp/ranks"  # the rank processes only (mpirun's command line starts otherwise)
wait $pid
stopped ranks $? 0
# 5. SIGTERM to a plain mpirun with the grace raised: Open MPI 4.1 waits odls_base_sigkill_timeout seconds, sends
#    SIGTERM to the ranks, waits as long again, then SIGKILLs them; mpirun's own exit code is its abort's (1). The
#    ranks checkpoint within the grace and exit 0.
"$mpiexec" --oversubscribe --mca odls_base_sigkill_timeout 4 -np 2 "$bin" "${job[@]}" \
    --set "run.output_dir=$tmp/mpirun_term" >"$tmp/mpirun_term.log" 2>&1 &
pid=$!
wait_rows "$tmp/mpirun_term" 5 || fail "mpirun_term: the job did not start"
kill -TERM $pid
wait $pid
stopped mpirun_term $? 1
echo "PASS"
