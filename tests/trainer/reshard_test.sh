#!/usr/bin/env bash
# Resuming on another layout (docs/distributed.md, "Resuming on another layout"): a job killed on 2 ranks resumes on
# 1, and one killed on 1 rank resumes on 2 with ZeRO 1 and expert parallelism, each with the same global batch
# (rollout.prompts_per_step and trainer.micro_batch_size count per rank) — the resumed run must train what the
# uninterrupted one does: loss and grad_norm of every step and the final weights within 1e-5 (the layouts' summation
# orders), one metrics row per step, every prompt slot of the stream once. The DSA stages' token stream continues
# by the job's window count (synthetic data); a DSA stage on a data file refuses another world size, naming dsa.data.
# Usage: reshard_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
bin=$1
mpiexec=$2
python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
job=(--set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=4 --set trainer.eval_prompts=0
     --set rollout.group_size=4 --set rollout.max_new_tokens=8 --set trainer.tensorboard=false
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3
     --set 'domains[0].rewards[0].module=regex_match' --set 'domains[0].rewards[0].params={pattern: "[aeiou]"}')
one=(--set rollout.prompts_per_step=2 --set trainer.micro_batch_size=4)  # the global batch on 1 rank
two=(--set rollout.prompts_per_step=1 --set trainer.micro_batch_size=2)  # and on 2
run() {  # run NP OUT_DIR [more arguments]
    "$mpiexec" --oversubscribe -np "$1" "$bin" "${job[@]}" --set "run.output_dir=$2" "${@:3}"
}
compare="$python $(dirname "$0")/compare_runs.py"
run 2 "$tmp/np2" "${two[@]}" >"$tmp/np2.log" 2>&1 || { echo "FAIL: the 2-rank run failed"; cat "$tmp/np2.log"; exit 1; }

# 2 ranks (ZeRO 1) killed at the start of job step 5 (GRPO step 3), resumed on 1 rank.
DSRL_FAULT_KILL=step_start:5 run 2 "$tmp/down" "${two[@]}" --set trainer.zero_stage=1 >"$tmp/down1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed 2-rank run exited 0"; exit 1; }
[ "$(cat "$tmp/down/checkpoints/latest")" = "step-00000004" ] || { echo "FAIL: no step-4 checkpoint"; exit 1; }
run 1 "$tmp/down" "${one[@]}" --resume auto >"$tmp/down2.log" 2>&1 ||
    { echo "FAIL: the 2-rank checkpoint did not resume on 1 rank"; cat "$tmp/down2.log"; exit 1; }
grep -q "written by 2 ranks; this job has 1: resharding" "$tmp/down2.log" ||
    { echo "FAIL: no resharding warning"; cat "$tmp/down2.log"; exit 1; }
$compare "$tmp" np2 down || exit 1
! grep -q "the global batch changes" "$tmp/down2.log" || { echo "FAIL: a kept global batch was warned about"; exit 1; }
# The finished job resumed on 2 ranks with the 1-rank sizes: the global batch doubles, and the warning says which
# per-rank values keep it.
run 2 "$tmp/down" "${one[@]}" --resume auto >"$tmp/down3.log" 2>&1 ||
    { echo "FAIL: the finished job did not resume on 2 ranks"; cat "$tmp/down3.log"; exit 1; }
for key in "rollout.prompts_per_step 2 x 1 ranks = 2 in the checkpoint's job, 2 x 2 = 4 now: --set rollout.prompts_per_step=1" \
           "trainer.micro_batch_size 4 x 1 ranks = 4 in the checkpoint's job, 4 x 2 = 8 now: --set trainer.micro_batch_size=2"; do
    grep -qF "the global batch changes with the world size: $key keeps it" "$tmp/down3.log" ||
        { echo "FAIL: no warning '$key'"; cat "$tmp/down3.log"; exit 1; }
done

# 1 rank killed at the same point, resumed on 2 ranks with ZeRO 1 and expert parallelism 2.
DSRL_FAULT_KILL=step_start:5 run 1 "$tmp/up" "${one[@]}" >"$tmp/up1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed 1-rank run exited 0"; exit 1; }
run 2 "$tmp/up" "${two[@]}" --set trainer.zero_stage=1 --set dist.expert_parallel_size=2 --resume auto \
    >"$tmp/up2.log" 2>&1 || { echo "FAIL: the 1-rank checkpoint did not resume on 2 ranks"; cat "$tmp/up2.log"; exit 1; }
$compare "$tmp" np2 up --floor 1e-7 || exit 1  # grpo loss ~0: 1 rank against 2 rounds it apart by ~3e-8

# One row per step, and the prompts: both resumed runs drew the uninterrupted run's global batches (their
# response lengths and rewards per step agree with it).
"$python" - "$tmp" <<'PY' || exit 1
import json, sys
tmp = sys.argv[1]
def rows(d):
    return [json.loads(l) for l in open(f"{tmp}/{d}/metrics.jsonl")]
base = {(r["stage"], r["step"]): r for r in rows("np2")}
bad = 0
for d in ("down", "up"):
    keys = [(r["stage"], r["step"]) for r in rows(d) if r["stage"] in ("sft", "grpo")]
    if sorted(keys) != sorted(k for k in base if k[0] in ("sft", "grpo")) or len(keys) != len(set(keys)):
        print(f"FAIL: {d}: metrics rows {keys}"); bad += 1
    for r in rows(d):
        if r["stage"] != "grpo":
            continue
        b = base[("grpo", r["step"])]
        for k in ["generated_tokens", "sequences"] + [k for k in b if k.startswith("reward_mean/")]:
            if abs(r.get(k, -1) - b[k]) > 1e-6 * max(1.0, abs(b[k])):
                print(f"FAIL: {d} grpo step {r['step']} {k}: {r.get(k)} vs {b[k]}"); bad += 1
print(f"{'FAIL' if bad else 'ok  '} rows and per-step batches of the resumed runs")
if base[("grpo", 4)]["grad_norm"] == 0:
    print("FAIL: no learning signal in the last GRPO step; the comparison proves nothing"); bad += 1
sys.exit(1 if bad else 0)
PY

# The DSA stages: the synthetic token stream continues on another world size (2 ranks x batch 2 -> 1 rank x 4).
dsa=(--set 'run.stages=[indexer_warmup, sparse_train]' --set model.index_topk=16 --set dsa.seq_len=64
     --set dsa.eval_batches=1 --set dsa.warmup_steps=2 --set dsa.sparse_steps=2 --set trainer.tensorboard=false
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3)
dsa_run() { "$mpiexec" --oversubscribe -np "$1" "$bin" "${dsa[@]}" --set "run.output_dir=$2" "${@:3}"; }
synthetic=(--set 'dsa.data=synthetic:retrieval?keys=8')
dsa_run 1 "$tmp/dsa1" "${synthetic[@]}" --set dsa.batch_size=4 >"$tmp/dsa1.log" 2>&1 ||
    { echo "FAIL: the 1-rank DSA run failed"; cat "$tmp/dsa1.log"; exit 1; }
DSRL_FAULT_KILL=step_start:2 dsa_run 2 "$tmp/dsa" "${synthetic[@]}" --set dsa.batch_size=2 >"$tmp/dsa.k.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed DSA run exited 0"; exit 1; }
dsa_run 1 "$tmp/dsa" "${synthetic[@]}" --set dsa.batch_size=4 --resume auto >"$tmp/dsa.r.log" 2>&1 ||
    { echo "FAIL: the DSA checkpoint did not resume on 1 rank"; cat "$tmp/dsa.r.log"; exit 1; }
"$python" - "$tmp/dsa1/metrics.jsonl" "$tmp/dsa/metrics.jsonl" <<'PY' || exit 1
import json, sys
a, b = ({(r["stage"], r["step"]): r for r in map(json.loads, open(p)) if r["stage"] in ("indexer_warmup", "sparse_train")}
        for p in sys.argv[1:])
bad = 0 if sorted(a) == sorted(b) and len(a) == 4 else 1
for k in sorted(a):
    x, y = a[k]["loss"], b.get(k, {}).get("loss", float("nan"))
    ok = abs(x - y) <= 1e-5 * max(1.0, abs(x))
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {k[0]} step {k[1]} loss: uninterrupted 1 rank {x:.7g}, 2 ranks -> 1 {y:.7g}")
sys.exit(1 if bad else 0)
PY
# A DSA stage on a data file: its held-out windows depend on the world size, so another one is refused.
for i in $(seq 1 64); do echo "{\"text\": \"line $i of a small corpus for the indexer stages to read\"}"; done >"$tmp/corpus.jsonl"
DSRL_FAULT_KILL=step_start:2 dsa_run 2 "$tmp/dsaf" --set "dsa.data=$tmp/corpus.jsonl" --set dsa.batch_size=2 \
    >"$tmp/dsaf.k.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed DSA file run exited 0"; exit 1; }
dsa_run 1 "$tmp/dsaf" --set "dsa.data=$tmp/corpus.jsonl" --set dsa.batch_size=4 --resume auto >"$tmp/dsaf.r.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: a DSA stage on a file resumed on another world size"; exit 1; }
grep -q "dsa.data '$tmp/corpus.jsonl' is a file whose held-out windows depend on the world size" "$tmp/dsaf.r.log" ||
    { echo "FAIL: the refusal does not name dsa.data"; cat "$tmp/dsaf.r.log"; exit 1; }
echo "ok: 2 -> 1 and 1 -> 2 ranks (ZeRO 1, EP 2) resumed the run; the DSA stream continued; a file-backed DSA stage refused"
