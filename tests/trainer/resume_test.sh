#!/usr/bin/env bash
# Exact resume (issue 8): on 2 MPI ranks, run 2 SFT + 4 GRPO steps (6 job steps) uninterrupted; separately
# run the same job, kill it with SIGKILL in the middle of writing the job-step-5 checkpoint (RL step 3),
# resume from `latest` (job step 4 = RL step 2): the final weights must equal the uninterrupted run's bit for
# bit, and no checkpoint directory may exist half-written under its final name. Usage: resume_test.sh path/to/dsrl_train MPIEXEC [PYTHON with tensorboard]
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
job=(--set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=4
     --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=8
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=2
     --set 'domains[0].rewards[0].module=length_penalty' --set 'domains[0].rewards[0].params={target: "4"}')
run() { "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set "run.output_dir=$1" "${@:2}"; }

run "$tmp/a" >"$tmp/a.log" 2>&1 || { echo "FAIL: the uninterrupted run failed"; cat "$tmp/a.log"; exit 1; }
DSRL_FAULT_KILL=in_checkpoint:5 run "$tmp/b" >"$tmp/b1.log" 2>&1
rc=$?
[ $rc -ne 0 ] || { echo "FAIL: the killed run exited 0"; cat "$tmp/b1.log"; exit 1; }
latest=$(cat "$tmp/b/checkpoints/latest")
[ "$latest" = "step-00000004" ] || { echo "FAIL: latest is '$latest' after the kill, want step-00000004"; exit 1; }
[ ! -e "$tmp/b/checkpoints/step-00000005" ] || { echo "FAIL: a half-written step-00000005 exists"; exit 1; }
echo "killed during the step-5 checkpoint (exit $rc); latest = $latest"
run "$tmp/b" --resume auto >"$tmp/b2.log" 2>&1 || { echo "FAIL: the resumed run failed"; cat "$tmp/b2.log"; exit 1; }
ls -a "$tmp/b/checkpoints" | grep -q '\.tmp' && { echo "FAIL: a .tmp directory survived the resumed run"; exit 1; }
# One metrics row per step: rows the killed job wrote after its last checkpoint were dropped on resume.
grep -q "metrics.jsonl: dropping .* bytes of rows written after the checkpoint" "$tmp/b2.log" ||
    { echo "FAIL: the resume did not drop the killed job's rows after its checkpoint"; cat "$tmp/b2.log"; exit 1; }
same_steps_and_weights "$tmp/a" "$tmp/b" step-00000006 || exit 1
# TensorBoard too: the killed job's events after the checkpoint were cut, so every tag has the uninterrupted run's
# steps, each once (TensorBoard's own reader, when a python with it is given).
if [ -n "${3:-}" ]; then
    grep -q "tb: dropping .* bytes of TensorBoard events written after the checkpoint" "$tmp/b2.log" ||
        { echo "FAIL: the resume did not cut the killed job's TensorBoard events"; cat "$tmp/b2.log"; exit 1; }
    "$3" - "$tmp/a/tb" "$tmp/b/tb" <<'PY' || exit 1
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
def steps(d):
    acc = EventAccumulator(d, purge_orphaned_data=False)
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
a, b = steps(sys.argv[1]), steps(sys.argv[2])
if not a or a != b:
    bad = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))[:3]
    sys.exit(f"FAIL: TensorBoard steps differ after the resume: {[(t, a.get(t), b.get(t)) for t in bad]}")
print(f"ok: TensorBoard has the uninterrupted run's steps ({len(a)} tags)")
PY
fi
echo "ok: resumed from the checkpoint before the kill and matched the uninterrupted run"
