#!/usr/bin/env bash
# Data-parallel invariance (issue 11, on CPU ranks): the same job on 1 rank with micro_batch_size 4 and
# prompts_per_step 2, and on 2 ranks with 2 and 1 (the same global batch), must train on the same data and
# report the same losses: the global batch is drawn by global slot (seeded by the job, not the rank), SFT
# normalizes by the global token count, rollout sample seeds follow the global prompt id. Compares SFT steps
# 1-2 (loss, grad_norm) and GRPO steps 1-2 (grad_norm, entropy, reward; the counts and extremes of the global
# batch: generated and loss tokens, sequences, failed samples, ratio min / max) within fp32 summation-order tolerance,
# for loss_agg seq_mean and token_mean (GRPO divides by the global mini-batch's count).
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
pair() {  # pair NAME [extra --set arguments]: the job on 1 rank (4 / 2) and on 2 ranks (2 / 1), then compared
    local name=$1
    shift
    "$mpiexec" --oversubscribe -np 1 "$bin" "${job[@]}" "$@" --set trainer.micro_batch_size=4 --set rollout.prompts_per_step=2 \
        --set trainer.checkpoint.every_steps=0 \
        --set "run.output_dir=$tmp/$name.one" >"$tmp/$name.one.log" 2>&1 || { echo "FAIL: $name: the 1-rank run failed"; cat "$tmp/$name.one.log"; exit 1; }
    [ "$(cat "$tmp/$name.one/checkpoints/latest" 2>/dev/null)" = "step-00000004" ] ||
        { echo "FAIL: every_steps 0 left no final checkpoint step-00000004"; ls -R "$tmp/$name.one"; exit 1; }
    "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" "$@" --set trainer.micro_batch_size=2 --set rollout.prompts_per_step=1 \
        --set "run.output_dir=$tmp/$name.two" >"$tmp/$name.two.log" 2>&1 || { echo "FAIL: $name: the 2-rank run failed"; cat "$tmp/$name.two.log"; exit 1; }
    echo "== $name"
    "$python" - "$tmp/$name.one/metrics.jsonl" "$tmp/$name.two/metrics.jsonl" <<'PY' || exit 1
import json, sys
def load(path):
    return {(d["stage"], d["step"]): d for d in map(json.loads, open(path))}
one, two = load(sys.argv[1]), load(sys.argv[2])
checks = [(("sft", 1), "loss"), (("sft", 1), "grad_norm"), (("sft", 2), "loss"), (("sft", 2), "grad_norm"),
          (("grpo", 1), "entropy_mean"), (("grpo", 1), "grad_norm"), (("grpo", 2), "grad_norm"),
          (("grpo", 2), "entropy_mean")]
bad = 0
for key, name in checks:
    a, b = one[key][name], two[key][name]
    rel = abs(a - b) / max(abs(a), 1e-12)
    # entropy_mean is a diagnostic averaged over ranks (a mean of per-rank token means), not globally normalized
    ok = rel <= (1e-4 if name == "entropy_mean" else 1e-5)
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {key[0]} step {key[1]} {name}: 1 rank {a:.7g}, 2 ranks {b:.7g} (rel diff {rel:.1e})")
# Counts are global totals and extremes are over the whole batch, whatever the number of ranks.
for step in (1, 2):
    for k in ("generated_tokens", "sequences", "tokens", "failed_samples", "dropped_groups", "reward_failed",
              "ratio_min", "ratio_max"):
        a, b = one[("grpo", step)][k], two[("grpo", step)][k]
        ok = abs(a - b) <= 1e-5 * max(abs(a), 1.0)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} grpo step {step} {k}: 1 rank {a:.7g}, 2 ranks {b:.7g}")
for step in (1, 2):
    for k in [k for k in two[("grpo", step)] if k.startswith("reward_mean/")]:
        same = one[("grpo", step)].get(k) == two[("grpo", step)][k]
        bad += not same
        print(f"{'ok  ' if same else 'FAIL'} grpo step {step} {k}: {one[('grpo', step)].get(k)} vs {two[('grpo', step)][k]}")
print(f"     grpo step 2 response_len_mean: {one[('grpo', 2)]['response_len_mean']:.3f} (1 rank)")
if one[("grpo", 2)]["grad_norm"] == 0:
    print("FAIL: GRPO step 2 had no learning signal; the comparison proves nothing"); bad += 1
sys.exit(1 if bad else 0)
PY
}
pair seq_mean
# token_mean with responses cut at the first vowel or space (lengths 1..24): the ranks hold different token counts, so only the global
# token normalization makes the 2-rank loss the 1-rank one.
pair token_mean --set grpo.loss_agg=token_mean --set rollout.max_new_tokens=24 \
    --set 'rollout.stop=["a", "e", "i", "o", "u", " "]'
