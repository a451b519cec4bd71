#!/usr/bin/env bash
# Expert parallelism in dsrl_train (issue 21) on CPU ranks: the same SFT job (3 steps; each rank's own batch)
# with dist.expert_parallel_size 1, 2 and 4 — on 2 and 4 ranks, also with ZeRO 2 — and the DSA stages with EP 2,
# must train the same weights as EP 1 (losses and gradient norms of every step, and every final weight tensor —
# written whole in the HF layout, experts gathered — within 1e-5 relative, the latter as ||a - b|| / ||a||); an EP 2 job killed mid-checkpoint resumes bit
# for bit; its checkpoint continues at EP 1 (resharded); a grpo stage under EP, an EP size that does not divide the
# ranks or the experts are config errors.
# Usage: expert_parallel_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
sft=(--set 'run.stages=[sft]' --set sft.steps=3 --set trainer.micro_batch_size=4 --set trainer.tensorboard=false
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3)
dsa=(--set 'run.stages=[indexer_warmup, sparse_train]' --set run.device=cpu --set trainer.tensorboard=false
     --set model.index_topk=16 --set dsa.seq_len=64 --set 'dsa.data=synthetic:retrieval?keys=8' --set dsa.batch_size=2
     --set dsa.eval_batches=1 --set dsa.warmup_steps=2 --set dsa.sparse_steps=2 --set trainer.checkpoint.every_steps=100)
run() {  # run NP OUT_DIR [arguments]
    "$mpiexec" --oversubscribe -np "$1" "$bin" --set "run.output_dir=$2" "${@:3}"
}
for spec in "2 1 0" "2 2 0" "2 2 2" "4 1 0" "4 2 1" "4 4 0"; do
    set -- $spec
    run "$1" "$tmp/np$1.ep$2.z$3" "${sft[@]}" --set "dist.expert_parallel_size=$2" --set "trainer.zero_stage=$3" \
        >"$tmp/np$1.ep$2.z$3.log" 2>&1 || { echo "FAIL: SFT on $1 ranks, EP $2, ZeRO $3"; cat "$tmp/np$1.ep$2.z$3.log"; exit 1; }
done
for ep in 1 2; do
    run 2 "$tmp/dsa.ep$ep" "${dsa[@]}" --set "dist.expert_parallel_size=$ep" >"$tmp/dsa.ep$ep.log" 2>&1 ||
        { echo "FAIL: the DSA stages with EP $ep"; cat "$tmp/dsa.ep$ep.log"; exit 1; }
done
"$python" - "$tmp" <<'PY' || exit 1
import json, os, sys
import numpy as np
from safetensors.numpy import load_file
tmp = sys.argv[1]
def rows(d):
    return {(r["stage"], r["step"]): r for r in map(json.loads, open(f"{tmp}/{d}/metrics.jsonl"))}
def weights(d):
    ck = f"{tmp}/{d}/checkpoints"
    return load_file(f"{ck}/{open(f'{ck}/latest').read().strip()}/model/model.safetensors")
bad = 0
for base, other in [("np2.ep1.z0", "np2.ep2.z0"), ("np2.ep1.z0", "np2.ep2.z2"), ("np4.ep1.z0", "np4.ep2.z1"),
                    ("np4.ep1.z0", "np4.ep4.z0"), ("dsa.ep1", "dsa.ep2")]:
    a, b = rows(base), rows(other)
    worst, where = 0.0, ""
    for key in a:
        for name in ("loss", "grad_norm"):
            if name not in a[key]:
                continue
            x, y = a[key][name], b[key][name]
            rel = max(abs(x - y) - 1e-8, 0.0) / max(abs(x), 1e-12)
            if rel >= worst:
                worst, where = rel, f"{key[0]} step {key[1]} {name} {x:.9g} vs {y:.9g}"
    wa, wb = weights(base), weights(other)
    missing = set(wa) ^ set(wb)
    # per tensor ||a - b|| / ||a||: AdamW's first steps divide by |g| + eps, so an element whose gradient is ~eps
    # (a rounding-level sum) moves by a visible fraction of lr when the exchange regroups the sums' terms
    wdiff = max(float(np.linalg.norm(wa[k].astype("float64") - wb[k]) / max(np.linalg.norm(wa[k].astype("float64")),
                                                                            1e-12)) for k in wa)
    ok = worst <= 1e-5 and wdiff <= 1e-5 and not missing and len(a) == len(b)
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {other} vs {base}: {len(a)} steps, metrics rel diff {worst:.1e} (worst: {where}),"
          f" final weights ({len(wa)} tensors) rel diff {wdiff:.1e}{'; tensors differ: ' + str(missing) if missing else ''}")
sys.exit(1 if bad else 0)
PY
# Exact resume with EP 2: killed while writing the job-step-2 checkpoint, resumed from step 1.
DSRL_FAULT_KILL=in_checkpoint:2 run 2 "$tmp/kill" "${sft[@]}" --set dist.expert_parallel_size=2 >"$tmp/kill1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed run exited 0"; exit 1; }
run 2 "$tmp/kill" "${sft[@]}" --set dist.expert_parallel_size=2 --resume auto >"$tmp/kill2.log" 2>&1 ||
    { echo "FAIL: the resumed EP 2 run failed"; cat "$tmp/kill2.log"; exit 1; }
same_steps_and_weights "$tmp/np2.ep2.z0" "$tmp/kill" step-00000003 || exit 1
# Another expert-parallel size at the same world size: the EP 2 job's step-2 checkpoint continued at EP 1 (the
# model reloads whole; the experts' optimizer moments are assembled from the EP 2 slices).
mkdir -p "$tmp/reshard/checkpoints"
cp -r "$tmp/np2.ep2.z0/checkpoints/step-00000002" "$tmp/reshard/checkpoints/"
run 2 "$tmp/reshard" "${sft[@]}" --set dist.expert_parallel_size=1 --resume "$tmp/reshard/checkpoints/step-00000002" \
    >"$tmp/reshard.log" 2>&1 || { echo "FAIL: resuming an EP 2 checkpoint at EP 1"; cat "$tmp/reshard.log"; exit 1; }
"$python" - "$tmp/np2.ep2.z0" "$tmp/reshard" <<'PY' || exit 1
import sys
import numpy as np
from safetensors.numpy import load_file
a = load_file(f"{sys.argv[1]}/checkpoints/step-00000003/model/model.safetensors")
b = load_file(f"{sys.argv[2]}/checkpoints/step-00000003/model/model.safetensors")
d = max(float(np.linalg.norm(a[k].astype("float64") - b[k]) / max(np.linalg.norm(a[k].astype("float64")), 1e-12))
        for k in a)
print(f"{'ok  ' if d <= 1e-5 else 'FAIL'} EP 2 checkpoint resumed at EP 1: final weights rel diff {d:.1e}")
sys.exit(0 if d <= 1e-5 else 1)
PY
# Refused layouts, each naming its key.
expect_error() {  # expect_error NP NEEDLE ARGS...
    local np=$1 needle=$2
    out=$(run "$np" "$tmp/refused" "${@:3}" 2>&1) && { echo "FAIL: '${*:3}' ran"; exit 1; }
    echo "$out" | grep -q -- "$needle" || { echo "FAIL: '${*:3}' did not say '$needle': $out"; exit 1; }
    echo "ok   refused ($np ranks, ${*: -1}): $needle"
}
expect_error 2 "the grpo stage" --set dist.expert_parallel_size=2
expect_error 2 "dist.expert_parallel_size" "${sft[@]}" --set dist.expert_parallel_size=4
expect_error 4 "model.n_routed_experts" "${sft[@]}" --set dist.expert_parallel_size=4 --set model.n_routed_experts=6
echo "PASS"
