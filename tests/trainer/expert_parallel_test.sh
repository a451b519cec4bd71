#!/usr/bin/env bash
# Expert parallelism in dsrl_train (issue 21) on CPU ranks: the same SFT job (3 steps; each rank's own batch)
# with dist.expert_parallel_size 1, 2 and 4 — on 2 and 4 ranks, also with ZeRO 2 — the DSA stages with EP 2, and an
# SFT + GRPO job with evaluation (rollout and greedy decoding in lock-step) with EP 2 and 4, must train the same
# weights as EP 1 (losses and gradient norms of every step, and every final weight tensor —
# written whole in the HF layout, experts gathered — within 1e-5 relative, the latter as ||a - b|| / ||a||); an EP 2 job killed mid-checkpoint resumes bit
# for bit (SFT, and GRPO with its KL reference); its checkpoint continues at EP 1 (resharded); an EP size that does
# not divide the ranks or the experts is a config error. The MoE balance is on throughout (routing-bias update from
# the loads of every rank, sequence-wise balance loss): its biases are among the compared weights. Under EP each rank
# writes its own experts' shard files. The GRPO runs record and replay the DSA key sets (keep-indexer, at index_topk
# 16 so prompts reach the sparse regime).
# Usage: expert_parallel_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
mpiexec=$2
python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
balance=(--set moe.bias_update_speed=0.01 --set moe.seq_aux_loss_alpha=0.001)
sft=("${balance[@]}" --set 'run.stages=[sft]' --set sft.steps=3 --set trainer.micro_batch_size=4 --set trainer.tensorboard=false
     --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3)
# GRPO with held-out evaluation: rollout and greedy decoding run in lock-step across each EP group.
grpo=("${balance[@]}" --set model.index_topk=16 --set rollout.record_indexer=true --set grpo.keep_indexer=true
      --set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=2 --set rollout.group_size=4
      --set rollout.max_new_tokens=8 --set trainer.eval_prompts=4 --set trainer.eval_every=1 --set trainer.tensorboard=false
      --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=2)
dsa=("${balance[@]}" --set 'run.stages=[indexer_warmup, sparse_train]' --set run.device=cpu --set trainer.tensorboard=false
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
for spec in "2 1" "2 2" "4 1" "4 4"; do
    set -- $spec
    run "$1" "$tmp/grpo.np$1.ep$2" "${grpo[@]}" --set "dist.expert_parallel_size=$2" >"$tmp/grpo.np$1.ep$2.log" 2>&1 ||
        { echo "FAIL: GRPO on $1 ranks, EP $2"; cat "$tmp/grpo.np$1.ep$2.log"; exit 1; }
done
grep -q '"moe/max_load"' "$tmp/np2.ep2.z0/metrics.jsonl" || { echo "FAIL: no expert-load metrics"; exit 1; }
ls "$tmp/np2.ep2.z0/checkpoints/step-00000003/model/" | grep -q "model-00002-of-00002.safetensors" ||
    { echo "FAIL: EP 2 did not write one shard file per rank"; ls "$tmp/np2.ep2.z0/checkpoints/step-00000003/model/"; exit 1; }
compare="$python $(dirname "$0")/compare_runs.py"
for pair in "np2.ep1.z0 np2.ep2.z0" "np2.ep1.z0 np2.ep2.z2" "np4.ep1.z0 np4.ep2.z1" "np4.ep1.z0 np4.ep4.z0" \
            "dsa.ep1 dsa.ep2"; do
    $compare "$tmp" $pair || exit 1
done
# This GRPO stage's prompts all score 0 (a random model, 8 new tokens): its gradient is the KL term alone, tiny and
# nearly cancelling, so EP's other summation order moves grad_norm by ~1e-4 relative and Adam turns that into updates
# of either sign on rounding-noise elements (compare_runs.py --bound). The routes, kept sets and rewards still agree.
for pair in "grpo.np2.ep1 grpo.np2.ep2" "grpo.np4.ep1 grpo.np4.ep4"; do
    $compare "$tmp" $pair --bound 1e-3 || exit 1
done
# Exact resume with EP 2: killed while writing the job-step-2 checkpoint, resumed from step 1.
DSRL_FAULT_KILL=in_checkpoint:2 run 2 "$tmp/kill" "${sft[@]}" --set dist.expert_parallel_size=2 >"$tmp/kill1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed run exited 0"; exit 1; }
run 2 "$tmp/kill" "${sft[@]}" --set dist.expert_parallel_size=2 --resume auto >"$tmp/kill2.log" 2>&1 ||
    { echo "FAIL: the resumed EP 2 run failed"; cat "$tmp/kill2.log"; exit 1; }
same_steps_and_weights "$tmp/np2.ep2.z0" "$tmp/kill" step-00000003 || exit 1
# The same for GRPO under EP 2 (the KL reference is saved gathered too): killed in the job-step-3 checkpoint.
DSRL_FAULT_KILL=in_checkpoint:3 run 2 "$tmp/gkill" "${grpo[@]}" --set dist.expert_parallel_size=2 >"$tmp/gkill1.log" 2>&1
[ $? -ne 0 ] || { echo "FAIL: the killed GRPO run exited 0"; exit 1; }
run 2 "$tmp/gkill" "${grpo[@]}" --set dist.expert_parallel_size=2 --resume auto >"$tmp/gkill2.log" 2>&1 ||
    { echo "FAIL: the resumed EP 2 GRPO run failed"; cat "$tmp/gkill2.log"; exit 1; }
same_steps_and_weights "$tmp/grpo.np2.ep2" "$tmp/gkill" step-00000004 || exit 1
# Another expert-parallel size at the same world size: the EP 2 job's step-2 checkpoint continued at EP 1 (the
# model reloads whole; the experts' optimizer moments are assembled from the EP 2 slices).
mkdir -p "$tmp/reshard/checkpoints"
cp -r "$tmp/np2.ep2.z0/checkpoints/step-00000002" "$tmp/reshard/checkpoints/"
run 2 "$tmp/reshard" "${sft[@]}" --set dist.expert_parallel_size=1 --resume "$tmp/reshard/checkpoints/step-00000002" \
    >"$tmp/reshard.log" 2>&1 || { echo "FAIL: resuming an EP 2 checkpoint at EP 1"; cat "$tmp/reshard.log"; exit 1; }
$compare "$tmp" np2.ep2.z0 reshard || exit 1
# Refused layouts, each naming its key.
expect_error() {  # expect_error NP NEEDLE ARGS...
    local np=$1 needle=$2
    out=$(run "$np" "$tmp/refused" "${@:3}" 2>&1) && { echo "FAIL: '${*:3}' ran"; exit 1; }
    echo "$out" | grep -q -- "$needle" || { echo "FAIL: '${*:3}' did not say '$needle': $out"; exit 1; }
    echo "ok   refused ($np ranks, ${*: -1}): $needle"
}
expect_error 2 "dist.expert_parallel_size" "${sft[@]}" --set dist.expert_parallel_size=4
expect_error 4 "model.n_routed_experts" "${sft[@]}" --set dist.expert_parallel_size=4 --set model.n_routed_experts=6
echo "PASS"
