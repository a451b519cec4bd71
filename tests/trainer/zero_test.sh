#!/usr/bin/env bash
# Sharded optimizer state (issue 21, trainer.zero_stage) on CPU ranks: the same job (2 SFT + 4 GRPO steps) at ZeRO
# 0, 1 and 2 on 2 ranks, and at ZeRO 0 and 2 on 4 ranks, must train the same weights — losses and gradient norms
# of every step and the final weights bit for bit (every stage reduces and clips in the same order, and updates
# each element with the same arithmetic; the issue asks 1e-5) — with each rank holding about 1/N of the optimizer
# state (the checkpoint's shard files). A ZeRO 2 job
# killed in the middle of a checkpoint resumes bit for bit; a ZeRO 2 checkpoint resumes at ZeRO 0 (the state is
# stored by parameter name, so it reshards); trainer.zero_stage 3 is a config error naming the key.
# Usage: zero_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
job=(--set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=4 --set trainer.eval_prompts=0
     --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=8
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3 --set trainer.tensorboard=false
     --set 'domains[0].rewards[0].module=regex_match' --set 'domains[0].rewards[0].params={pattern: "[aeiou]"}')
run() {  # run NP OUT_DIR [more arguments]
    "$mpiexec" --oversubscribe -np "$1" "$bin" "${job[@]}" --set "run.output_dir=$2" "${@:3}"
}
for spec in "2 0" "2 1" "2 2" "4 0" "4 2"; do
    set -- $spec
    run "$1" "$tmp/np$1.z$2" --set "trainer.zero_stage=$2" >"$tmp/np$1.z$2.log" 2>&1 ||
        { echo "FAIL: the job on $1 ranks at ZeRO $2 failed"; cat "$tmp/np$1.z$2.log"; exit 1; }
done
compare="$python $(dirname "$0")/compare_runs.py"
for pair in "np2.z0 np2.z1" "np2.z0 np2.z2" "np4.z0 np4.z2"; do
    $compare "$tmp" $pair --exact || exit 1
done
"$python" - "$tmp" <<'PY' || exit 1
import glob, json, os, sys
tmp = sys.argv[1]
bad = 0
last = [json.loads(l) for l in open(f"{tmp}/np2.z0/metrics.jsonl")][-1]
if last["grad_norm"] == 0:
    print("FAIL: no learning signal in the last GRPO step"); bad += 1
# The state each rank holds: ZeRO 0 one file with all of it; ZeRO 1/2 one shard per rank, about 1/N each.
for d in ("np2.z0", "np2.z1", "np2.z2", "np4.z2"):
    ck = f"{tmp}/{d}/checkpoints/step-00000006"
    shards = sorted(glob.glob(f"{ck}/optimizer.rank*.safetensors"))
    sizes = [os.path.getsize(f) for f in shards] or [os.path.getsize(f"{ck}/optimizer.safetensors")]
    print(f"     {d}: optimizer state files {[round(s / 1e6, 2) for s in sizes]} MB")
    if d != "np2.z0":
        n = int(d[2])
        total = sum(sizes)
        if len(shards) != n or max(sizes) > 1.5 * total / n:
            print(f"FAIL: {d}: expected {n} shards of about 1/{n} of the state"); bad += 1
sys.exit(1 if bad else 0)
PY
# Exact resume at ZeRO 2: killed while writing the job-step-5 checkpoint, resumed from step 4.
DSRL_FAULT_KILL=in_checkpoint:5 run 2 "$tmp/kill" --set trainer.zero_stage=2 >"$tmp/kill1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed run exited 0"; exit 1; }
run 2 "$tmp/kill" --set trainer.zero_stage=2 --resume auto >"$tmp/kill2.log" 2>&1 ||
    { echo "FAIL: the resumed ZeRO 2 run failed"; cat "$tmp/kill2.log"; exit 1; }
same_steps_and_weights "$tmp/np2.z2" "$tmp/kill" step-00000006 || exit 1
# Another ZeRO stage: the ZeRO 2 job's step-4 checkpoint continued at ZeRO 0.
mkdir -p "$tmp/reshard/checkpoints"
cp -r "$tmp/np2.z2/checkpoints/step-00000004" "$tmp/reshard/checkpoints/"
run 2 "$tmp/reshard" --set trainer.zero_stage=0 --resume "$tmp/reshard/checkpoints/step-00000004" \
    >"$tmp/reshard.log" 2>&1 || { echo "FAIL: resuming a ZeRO 2 checkpoint at ZeRO 0 failed"; cat "$tmp/reshard.log"; exit 1; }
$compare "$tmp" np2.z2 reshard --exact || exit 1
out=$("$bin" --set trainer.zero_stage=3 2>&1)
echo "$out" | grep -q "trainer.zero_stage" || { echo "FAIL: zero_stage 3 not refused by key: $out"; exit 1; }
echo "PASS"
