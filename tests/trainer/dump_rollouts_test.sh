#!/usr/bin/env bash
# dsrl_train --dump-rollouts DIR: a 2-rank GRPO job writes one record file per rank and step, each readable by
# dsrl_tool rollouts, holding this rank's groups (G samples of one prompt each) with their rewards; the job records
# and replays the DSA key sets (rollout.record_indexer, grpo.keep_indexer) at index_topk 16, and the tool prints the
# field's size.
# Usage: dump_rollouts_test.sh path/to/dsrl_train path/to/dsrl_tool MPIEXEC
set -u
bin=$1
tool=$2
mpiexec=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
"$mpiexec" --oversubscribe -np 2 "$bin" --set "run.output_dir=$tmp/run" --set 'run.stages=[grpo]' \
    --set trainer.total_steps=2 --set trainer.eval_prompts=0 --set trainer.tensorboard=false \
    --set model.index_topk=16 --set rollout.record_indexer=true --set grpo.keep_indexer=true \
    --dump-rollouts "$tmp/rollouts" >"$tmp/log" 2>&1 || { echo "FAIL: the job failed"; cat "$tmp/log"; exit 1; }
files=$(cd "$tmp/rollouts" && ls | sort | tr '\n' ' ')
want="step-00000001.rank-0.dsrlroll step-00000001.rank-1.dsrlroll step-00000002.rank-0.dsrlroll step-00000002.rank-1.dsrlroll "
[ "$files" = "$want" ] || { echo "FAIL: expected files '$want', got '$files'"; exit 1; }
out=$("$tool" rollouts "$tmp/rollouts/step-00000002.rank-1.dsrlroll" --max-groups 1) ||
    { echo "FAIL: dsrl_tool rollouts could not read a dumped file"; exit 1; }
echo "$out" | head -5
echo "$out" | grep -q "group" || { echo "FAIL: no group in the dumped file"; exit 1; }
echo "$out" | grep -q "indexer sets: 3 layers x top-16, [0-9.]* bytes/token" ||
    { echo "FAIL: the records hold no indexer sets"; echo "$out"; exit 1; }
"$bin" --set rollout.record_indexer=false --set grpo.keep_indexer=true 2>&1 | grep -q "grpo.keep_indexer" ||
    { echo "FAIL: keep_indexer without record_indexer must be a config error naming the key"; exit 1; }
"$bin" --dump-rollouts 2>&1 | grep -q "needs a value\|needs a directory" ||
    { echo "FAIL: --dump-rollouts without a directory must be an error"; exit 1; }
echo "PASS: 4 record files, readable"
