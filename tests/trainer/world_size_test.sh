#!/usr/bin/env bash
# Data-parallel invariance (issue 11, on CPU ranks): the same job on 1 rank with micro_batch_size 4 and
# prompts_per_step 2, and on 2 ranks with 2 and 1 (the same global batch), must train on the same data and
# report the same losses: the global batch is drawn by global slot (seeded by the job, not the rank), SFT
# normalizes by the global token count, rollout sample seeds follow the global prompt id. Compares SFT steps
# 1-2 (loss, grad_norm) and GRPO steps 1-2 (grad_norm, entropy, reward) within fp32 summation-order tolerance.
# The 1-rank run also checkpoints with every_steps 0 (only at the end; once a division by zero, found on 2 GPUs).
# Usage: world_size_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
bin=$1
mpiexec=$2
python=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
job=(--set 'run.stages=[sft, grpo]' --set sft.steps=2 --set trainer.total_steps=2 --set rollout.group_size=4
     --set rollout.max_new_tokens=8 --set trainer.eval_prompts=0
     --set 'domains[0].rewards[0].module=regex_match' --set 'domains[0].rewards[0].params={pattern: "[aeiou]"}')
"$mpiexec" --oversubscribe -np 1 "$bin" "${job[@]}" --set trainer.micro_batch_size=4 --set rollout.prompts_per_step=2 \
    --set trainer.checkpoint.every_steps=0 \
    --set "run.output_dir=$tmp/one" >"$tmp/one.log" 2>&1 || { echo "FAIL: the 1-rank run failed"; cat "$tmp/one.log"; exit 1; }
[ "$(cat "$tmp/one/checkpoints/latest" 2>/dev/null)" = "step-00000004" ] ||
    { echo "FAIL: every_steps 0 left no final checkpoint step-00000004"; ls -R "$tmp/one"; exit 1; }
"$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" --set trainer.micro_batch_size=2 --set rollout.prompts_per_step=1 \
    --set "run.output_dir=$tmp/two" >"$tmp/two.log" 2>&1 || { echo "FAIL: the 2-rank run failed"; cat "$tmp/two.log"; exit 1; }
"$python" - "$tmp/one/metrics.jsonl" "$tmp/two/metrics.jsonl" <<'PY'
import json, sys
def load(path):
    return {(d["stage"], d["step"]): d for d in map(json.loads, open(path))}
one, two = load(sys.argv[1]), load(sys.argv[2])
checks = [(("sft", 1), "loss"), (("sft", 1), "grad_norm"), (("sft", 2), "loss"), (("sft", 2), "grad_norm"),
          (("grpo", 1), "entropy_mean"), (("grpo", 2), "grad_norm"), (("grpo", 2), "entropy_mean")]
bad = 0
for key, name in checks:
    a, b = one[key][name], two[key][name]
    rel = abs(a - b) / max(abs(a), 1e-12)
    ok = rel <= 1e-5
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {key[0]} step {key[1]} {name}: 1 rank {a:.7g}, 2 ranks {b:.7g} (rel diff {rel:.1e})")
rewards = [k for k in two[("grpo", 2)] if k.startswith("reward_mean/")]
for k in rewards:
    same = one[("grpo", 2)].get(k) == two[("grpo", 2)][k]
    bad += not same
    print(f"{'ok  ' if same else 'FAIL'} grpo step 2 {k}: {one[('grpo', 2)].get(k)} vs {two[('grpo', 2)][k]}")
if one[("grpo", 2)]["grad_norm"] == 0:
    print("FAIL: GRPO step 2 had no learning signal; the comparison proves nothing"); bad += 1
sys.exit(1 if bad else 0)
PY
