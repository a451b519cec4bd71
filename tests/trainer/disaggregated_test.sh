#!/usr/bin/env bash
# Disaggregated RL (issue 22) on CPU ranks. Synchronous (dist.max_policy_lag 0): 1 rollout rank + 2 trainer ranks, and
# 2 + 2, reproduce a colocated 2-rank GRPO job — every metrics.jsonl row within 1e-5 (timings aside) and the final
# weights equal. Pipelined (L = 1, 2): staleness per step 0, 1, 1 / 0, 1, 2, off-policy ratios, the same prompt ids.
# Runs SIGKILLed in their second checkpoint and resumed (L = 0 and 1) train exactly the uninterrupted runs' prompt ids
# (each once) and end with their weights bit for bit.
# Expert parallelism and ZeRO on the trainer ranks (L = 0): 2 trainers with EP 2 (+ ZeRO 1) and 1 or 2 rollout ranks
# reproduce a colocated EP 2 job, 2 trainers with ZeRO 2 the colocated ZeRO 0 job; at L = 1 EP 2 trainers get the
# same prompts with staleness 0, 1, 1; the rollout workers write no optimizer shard and no model file; an EP 2 + ZeRO 1
# run killed in its second checkpoint resumes bit for bit; EP that does not divide the trainer ranks is a config error
# naming dist.expert_parallel_size.
# Usage: disaggregated_test.sh path/to/dsrl_train path/to/dsrl_tool MPIEXEC PYTHON
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
tool=$2
mpiexec=$3
python=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
# Rewards that vary within a group (whether a random model's response holds such letters) and a learning rate at which
# the weights move well beyond the tolerances: the runs train (gradient norms ~0.2 from step 2, KL from step 3), so a
# rollout worker with stale weights shows in the next step's ratios (by ~1e-2 when it misses an expert slice).
job=(--set 'run.stages=[grpo]' --set trainer.total_steps=3 --set trainer.eval_prompts=8 --set trainer.eval_every=2
     --set trainer.tensorboard=false --set rollout.prompts_per_step=2 --set rollout.group_size=4
     --set rollout.max_new_tokens=12 --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=3
     --set trainer.optimizer.lr=1e-3 --set trainer.optimizer.warmup_steps=0 --set 'domains[1].beta=0.01'
     --set 'domains[0].rewards[0].module=regex_match' --set 'domains[0].rewards[0].params={pattern: "[a-z]"}'
     --set 'domains[1].rewards[0].module=regex_match' --set 'domains[1].rewards[0].params={pattern: "[a-e]"}')
dis=(--set dist.mode=disaggregated --set dist.max_policy_lag=0)
run() { local np=$1 out=$2; shift 2; "$mpiexec" --oversubscribe -np "$np" "$bin" "${job[@]}" --set "run.output_dir=$out" "$@"; }
run 2 "$tmp/colo" --dump-rollouts "$tmp/colo_rollouts" >"$tmp/colo.log" 2>&1 ||
    { echo "FAIL: the colocated run failed"; tail -20 "$tmp/colo.log"; exit 1; }
run 3 "$tmp/d1" "${dis[@]}" --set dist.rollout_ranks=1 --dump-rollouts "$tmp/d1_rollouts" >"$tmp/d1.log" 2>&1 ||
    { echo "FAIL: the disaggregated run (1 rollout + 2 trainer ranks) failed"; tail -20 "$tmp/d1.log"; exit 1; }
run 4 "$tmp/d2" "${dis[@]}" --set dist.rollout_ranks=2 >"$tmp/d2.log" 2>&1 ||
    { echo "FAIL: the disaggregated run (2 rollout + 2 trainer ranks) failed"; tail -20 "$tmp/d2.log"; exit 1; }
compare() {  # colocated dir, other dir, label
    "$python" - "$1" "$2" "$3" <<'PY'
import glob, json, sys
from safetensors.torch import load_file
a_dir, b_dir, label = sys.argv[1:]
rows = lambda d: [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
a, b = rows(a_dir), rows(b_dir)
assert len(a) == len(b), f"{label}: {len(a)} vs {len(b)} metrics rows"
timing = ("seconds", "per_s", "gpu_")
worst = 0.0
for x, y in zip(a, b):
    assert (x["stage"], x["step"]) == (y["stage"], y["step"]), (x, y)
    for k, v in x.items():
        if not isinstance(v, (int, float)) or any(t in k for t in timing):
            continue
        assert k in y, f"{label}: step {x['step']} lacks {k}"
        d = abs(v - y[k])
        worst = max(worst, d)
        assert d <= 1e-5, f"{label}: step {x['step']} {k}: colocated {v}, disaggregated {y[k]}"
def weights(d):  # model.safetensors, or one file per writer under expert parallelism
    out = {}
    for f in sorted(glob.glob(f"{d}/checkpoints/step-00000003/model/*.safetensors")):
        out.update(load_file(f))
    return out
wa, wb = weights(a_dir), weights(b_dir)
assert wa and wa.keys() == wb.keys(), f"{label}: other tensors"
dw = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
assert dw <= 1e-5, f"{label}: final weights differ by {dw}"
# ... and they trained: the weights moved from the initial ones well beyond the tolerance.
moved = max(r.get("grad_norm", 0) for r in a)
assert moved > 0.05, f"{label}: the colocated run did not train (gradient norms {moved})"
print(f"{label}: {len(a)} metrics rows within {worst:.1e}, final weights within {dw:.1e}")
PY
}
compare "$tmp/colo" "$tmp/d1" "1 rollout + 2 trainer ranks" || exit 1
compare "$tmp/colo" "$tmp/d2" "2 rollout + 2 trainer ranks" || exit 1
# Expert parallelism and ZeRO on the trainers. A colocated EP 2 job rolls out through the EP exchange, the rollout
# workers with every expert, so the recorded log-probs differ by rounding (the test allows 1e-5; ~5e-7 seen).
ep=(--set dist.expert_parallel_size=2)
run 2 "$tmp/colo_ep" "${ep[@]}" >"$tmp/colo_ep.log" 2>&1 ||
    { echo "FAIL: the colocated EP 2 run failed"; tail -20 "$tmp/colo_ep.log"; exit 1; }
run 3 "$tmp/dez" "${dis[@]}" "${ep[@]}" --set trainer.zero_stage=1 --set dist.rollout_ranks=1 >"$tmp/dez.log" 2>&1 ||
    { echo "FAIL: the disaggregated EP 2 + ZeRO 1 run (1 rollout + 2 trainer ranks) failed"; tail -20 "$tmp/dez.log"; exit 1; }
run 4 "$tmp/de2" "${dis[@]}" "${ep[@]}" --set dist.rollout_ranks=2 >"$tmp/de2.log" 2>&1 ||
    { echo "FAIL: the disaggregated EP 2 run (2 rollout + 2 trainer ranks) failed"; tail -20 "$tmp/de2.log"; exit 1; }
run 3 "$tmp/dz" "${dis[@]}" --set trainer.zero_stage=2 --set dist.rollout_ranks=1 >"$tmp/dz.log" 2>&1 ||
    { echo "FAIL: the disaggregated ZeRO 2 run failed"; tail -20 "$tmp/dz.log"; exit 1; }
compare "$tmp/colo_ep" "$tmp/dez" "EP 2 + ZeRO 1, 1 rollout + 2 trainer ranks" || exit 1
compare "$tmp/colo_ep" "$tmp/de2" "EP 2, 2 rollout + 2 trainer ranks" || exit 1
compare "$tmp/colo" "$tmp/dz" "ZeRO 2, 1 rollout + 2 trainer ranks" || exit 1
# The trainers write the checkpoint's optimizer shards and model files, the rollout workers neither.
c="$tmp/dez/checkpoints/step-00000003"
[ "$(cd "$c" && ls optimizer*)" = "$(printf 'optimizer.rank0.safetensors\noptimizer.rank1.safetensors')" ] ||
    { echo "FAIL: EP + ZeRO optimizer files: $(cd "$c" && ls optimizer* | tr '\n' ' ')"; exit 1; }
[ "$(cd "$c/model" && ls ./*.safetensors | wc -l)" = 2 ] || { echo "FAIL: want one model file per EP rank"; exit 1; }
[ ! -e "$tmp/dz/checkpoints/step-00000003/optimizer.rank2.safetensors" ] ||
    { echo "FAIL: the ZeRO 2 run's rollout worker wrote an optimizer shard"; exit 1; }
DSRL_FAULT_KILL=in_checkpoint:2 run 3 "$tmp/kez" "${dis[@]}" "${ep[@]}" --set trainer.zero_stage=1 \
    --set dist.rollout_ranks=1 >"$tmp/kez1.log" 2>&1 && { echo "FAIL: the killed EP + ZeRO run exited 0"; exit 1; }
[ "$(cat "$tmp/kez/checkpoints/latest")" = "step-00000001" ] || { echo "FAIL: EP + ZeRO: latest is not step-00000001"; exit 1; }
run 3 "$tmp/kez" "${dis[@]}" "${ep[@]}" --set trainer.zero_stage=1 --set dist.rollout_ranks=1 --resume auto \
    >"$tmp/kez2.log" 2>&1 || { echo "FAIL: the resumed EP + ZeRO run failed"; tail -20 "$tmp/kez2.log"; exit 1; }
same_steps_and_weights "$tmp/dez" "$tmp/kez" step-00000003 || exit 1
out=$("$mpiexec" --oversubscribe -np 4 "$bin" "${job[@]}" --set "run.output_dir=$tmp/bad_ep" "${dis[@]}" "${ep[@]}" \
      --set dist.rollout_ranks=1 2>&1) && { echo "FAIL: EP 2 over 3 trainer ranks ran"; exit 1; }
grep -q "config error: dist.expert_parallel_size=2 must be >= 1 and divide the number of trainer ranks 3" <<<"$out" ||
    { echo "FAIL: want the dist.expert_parallel_size error, got:"; echo "$out"; exit 1; }
echo "EP 2 over 3 trainer ranks: config error naming dist.expert_parallel_size"
# Pipelined (max_policy_lag L >= 1): the rollout worker generates L steps ahead while the trainers train. Groups are
# trained at most L versions after they were sampled (the first steps less), every prompt id once.
run 3 "$tmp/l1" --set dist.mode=disaggregated --set dist.max_policy_lag=1 --set dist.rollout_ranks=1 \
    --dump-rollouts "$tmp/l1_rollouts" >"$tmp/l1.log" 2>&1 ||
    { echo "FAIL: the disaggregated run at max_policy_lag 1 failed"; tail -20 "$tmp/l1.log"; exit 1; }
run 3 "$tmp/l2" --set dist.mode=disaggregated --set dist.max_policy_lag=2 --set dist.rollout_ranks=1 \
    >"$tmp/l2.log" 2>&1 || { echo "FAIL: the disaggregated run at max_policy_lag 2 failed"; tail -20 "$tmp/l2.log"; exit 1; }
run 3 "$tmp/le" --set dist.mode=disaggregated --set dist.max_policy_lag=1 --set dist.rollout_ranks=1 "${ep[@]}" \
    --dump-rollouts "$tmp/le_rollouts" >"$tmp/le.log" 2>&1 ||
    { echo "FAIL: the disaggregated EP 2 run at max_policy_lag 1 failed"; tail -20 "$tmp/le.log"; exit 1; }
"$python" - "$tmp/colo" "$tmp/l1" "$tmp/l2" "$tmp/colo_ep" "$tmp/le" <<'PY' || exit 1
import json, sys
def grpo(d):
    return [r for r in map(json.loads, open(f"{d}/metrics.jsonl")) if r["stage"] == "grpo"]
colo, l1, l2, colo_ep, le = (grpo(d) for d in sys.argv[1:])
assert [r["staleness_mean"] for r in l1] == [0, 1, 1], [r["staleness_mean"] for r in l1]
assert [r["staleness_mean"] for r in le] == [0, 1, 1], [r["staleness_mean"] for r in le]
assert abs(le[0]["loss"] - colo_ep[0]["loss"]) < 1e-6, "EP 2: the first step (nothing to lag) must equal the colocated one"
assert [r["staleness_mean"] for r in l2] == [0, 1, 2], [r["staleness_mean"] for r in l2]
# Off-policy from the second step on: the trained policy differs from the one that sampled (ratio != 1), and the run
# departs from the synchronous one.
assert abs(l1[1]["ratio_mean"] - 1) > 1e-7 or abs(l1[2]["ratio_mean"] - 1) > 1e-7, l1
assert abs(l1[0]["loss"] - colo[0]["loss"]) < 1e-6, "the first step (nothing to lag) must equal the colocated one"
print("max_policy_lag 1 / 2 / 1 with EP 2: staleness per step", [r["staleness_mean"] for r in l1],
      [r["staleness_mean"] for r in l2], [r["staleness_mean"] for r in le])
PY
# The records the trainers received: the same prompt ids as the colocated run's, each once.
ids() { for f in "$1"/*.dsrlroll; do "$tool" rollouts "$f"; done | sed -n 's/^group [0-9]*: domain .*, prompt id \([0-9]*\),.*/\1/p' | sort; }
[ -n "$(ids "$tmp/colo_rollouts")" ] || { echo "FAIL: no prompt ids in the colocated records"; exit 1; }
[ "$(ids "$tmp/colo_rollouts")" = "$(ids "$tmp/d1_rollouts")" ] ||
    { echo "FAIL: the disaggregated trainers received other prompt ids than the colocated ranks"; exit 1; }
[ -z "$(ids "$tmp/d1_rollouts" | uniq -d)" ] || { echo "FAIL: a prompt id was trained twice"; exit 1; }
[ "$(ids "$tmp/colo_rollouts")" = "$(ids "$tmp/l1_rollouts")" ] ||
    { echo "FAIL: at max_policy_lag 1 the trainers received other prompt ids than the colocated ranks"; exit 1; }
[ "$(ids "$tmp/colo_rollouts")" = "$(ids "$tmp/le_rollouts")" ] ||
    { echo "FAIL: EP 2 at max_policy_lag 1: the trainers received other prompt ids than the colocated ranks"; exit 1; }
# Kill in the job-step-2 checkpoint, resume: the uninterrupted disaggregated run's steps and weights, prompt ids once.
DSRL_FAULT_KILL=in_checkpoint:2 run 3 "$tmp/k" "${dis[@]}" --set dist.rollout_ranks=1 \
    --dump-rollouts "$tmp/k_rollouts" >"$tmp/k1.log" 2>&1 && { echo "FAIL: the killed run exited 0"; exit 1; }
[ "$(cat "$tmp/k/checkpoints/latest")" = "step-00000001" ] || { echo "FAIL: latest is not step-00000001"; exit 1; }
run 3 "$tmp/k" "${dis[@]}" --set dist.rollout_ranks=1 --resume auto --dump-rollouts "$tmp/k_rollouts" \
    >"$tmp/k2.log" 2>&1 || { echo "FAIL: the resumed disaggregated run failed"; tail -20 "$tmp/k2.log"; exit 1; }
same_steps_and_weights "$tmp/d1" "$tmp/k" step-00000003 || exit 1
[ "$(ids "$tmp/k_rollouts")" = "$(ids "$tmp/d1_rollouts")" ] ||
    { echo "FAIL: the killed and resumed run trained other prompt ids than the uninterrupted one"; exit 1; }
# Agent domains too: the rollout worker runs the multi-turn trajectories and their environments.
cat >"$tmp/agent.yaml" <<YAML
run: {name: dis_agent, seed: 3, stages: [grpo]}
model: {vocab_size: 320, chat_format: deepseek_v32, hidden_size: 32, num_hidden_layers: 2, first_k_dense_replace: 1,
        n_routed_experts: 4, num_experts_per_tok: 2, index_topk: 64, max_position_embeddings: 640}
trainer: {total_steps: 2, eval_prompts: 4, eval_every: 0, tensorboard: false, checkpoint: {every_steps: 1}}
rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 24, max_tool_calls: 3}
domains:
  - {name: calc, weight: 1, data: "synthetic:arithmetic?digits=2&ops=*", environment: {module: calculator}}
  - {name: echo, weight: 1, data: "synthetic:echo?words=2", rewards: [{module: exact_match}]}
YAML
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/agent.yaml" --set "run.output_dir=$tmp/ac" >"$tmp/ac.log" 2>&1 ||
    { echo "FAIL: the colocated agent job failed"; tail -20 "$tmp/ac.log"; exit 1; }
"$mpiexec" --oversubscribe -np 3 "$bin" --config "$tmp/agent.yaml" --set "run.output_dir=$tmp/ad" "${dis[@]}" \
    --set dist.rollout_ranks=1 >"$tmp/ad.log" 2>&1 ||
    { echo "FAIL: the disaggregated agent job failed"; tail -20 "$tmp/ad.log"; exit 1; }
"$python" - "$tmp/ac" "$tmp/ad" <<'PY' || exit 1
import json, sys
rows = lambda d: [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert len(a) == len(b)
assert any("agent/trajectories" in r for r in b), "no agent metrics in the disaggregated run"
for x, y in zip(a, b):
    for k, v in x.items():
        if isinstance(v, float) and "second" not in k and "per_s" not in k:
            assert abs(v - y[k]) <= 1e-5, f"step {x['step']} {k}: {v} vs {y[k]}"
print("agent domains: disaggregated = colocated")
PY
# Kill + resume at max_policy_lag 1: the batch generated ahead is part of the checkpoint (the rollout worker's cursor
# file), so the resumed run trains what the uninterrupted one did, bit for bit.
DSRL_FAULT_KILL=in_checkpoint:2 run 3 "$tmp/kl" --set dist.mode=disaggregated --set dist.max_policy_lag=1 \
    --set dist.rollout_ranks=1 >"$tmp/kl1.log" 2>&1 && { echo "FAIL: the killed lag-1 run exited 0"; exit 1; }
run 3 "$tmp/kl" --set dist.mode=disaggregated --set dist.max_policy_lag=1 --set dist.rollout_ranks=1 --resume auto \
    >"$tmp/kl2.log" 2>&1 || { echo "FAIL: the resumed lag-1 run failed"; tail -20 "$tmp/kl2.log"; exit 1; }
same_steps_and_weights "$tmp/l1" "$tmp/kl" step-00000003 || exit 1
echo "PASS: disaggregated = colocated (1+2 and 2+2 ranks, agent domains too, EP 2 and ZeRO 1/2 trainers); lag 1 and 2 pipelined; killed and resumed (lag 0 and 1, EP 2 + ZeRO 1): the same prompts once, the same weights"
