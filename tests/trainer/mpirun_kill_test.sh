#!/usr/bin/env bash
# mpirun dies alone (SIGKILL to the launcher, as a launcher or node failure would) in the middle of a 2-rank
# job, and `--resume auto` starts at once in the same run directory (issue 26). Open MPI starts every rank in
# its own process group, so the ranks outlive mpirun until they notice (DSRL_EXIT_WITH_LAUNCHER: within a
# second) and may still be writing a checkpoint: the resumed job must wait for them (run directory lock), clean
# up what they left, resume from a checkpoint before the end and finish with final weights equal to an
# uninterrupted run's bit for bit; no process of either job may be left running.
# Usage: mpirun_kill_test.sh path/to/dsrl_train MPIEXEC
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
launcher=""
trap '[ -n "$launcher" ] && kill -9 "$launcher" 2>/dev/null; pkill -9 -f "$tmp/" 2>/dev/null; rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -15 "$f"; done; exit 1; }
final=step-00000022
job=(--set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=20
     --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=8
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=2 --set trainer.eval_prompts=0
     --set 'domains[0].rewards[0].module=length_penalty' --set 'domains[0].rewards[0].params={target: "4"}')
run() { "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$1" "${@:2}"; }

run "$tmp/a" >"$tmp/a.log" 2>&1 || fail "the uninterrupted run failed"
# Started directly (not through `run`: $! would be a subshell's pid, and killing it would leave mpirun alive).
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$tmp/b" >"$tmp/b1.log" 2>&1 &
launcher=$!
for _ in $(seq 1 2400); do
    l=$(cat "$tmp/b/checkpoints/latest" 2>/dev/null)
    [ -n "$l" ] && [ "$l" \> step-00000002 ] && break
    sleep 0.05
done
kill -9 "$launcher"
at_kill=$(cat "$tmp/b/checkpoints/latest" 2>/dev/null)
wait "$launcher" 2>/dev/null
launcher=""
[ -n "$at_kill" ] && [ "$at_kill" \> step-00000002 ] || fail "no checkpoint after step 2 within 120 s"
[ "$at_kill" \< "$final" ] || fail "the job had finished ($at_kill) before mpirun was killed: make it longer"
survivors=$(pgrep -f "$tmp/b" | wc -l)
echo "killed mpirun with latest = $at_kill; $survivors rank process(es) still running; resuming at once"
run "$tmp/b" --resume auto >"$tmp/b2.log" 2>&1 || fail "the resumed run failed"
from=$(grep -m1 -o "resuming from [^ ]*" "$tmp/b2.log")
echo "$from"
[ -n "$from" ] || fail "the resumed run did not resume"
[[ "$from" != *"$final" ]] || fail "the killed job's ranks ran on to the end without their launcher"
grep -m2 "waiting\|removing" "$tmp/b2.log"
[ "$(cat "$tmp/b/checkpoints/latest")" = "$final" ] || fail "the resumed run did not finish"
pgrep -f "$tmp/b" >/dev/null && fail "processes of the killed job are still running"
same_steps_and_weights "$tmp/a" "$tmp/b" "$final" || fail "the resumed run differs from the uninterrupted one"
echo "ok: resumed right after mpirun was killed and matched the uninterrupted run"
