#!/usr/bin/env bash
# An agent job end to end (issue 20) on 2 ranks: the cold start (SFT on the calculator environment's
# demonstrations) then GRPO mixing three domains — calculator tasks (multi-turn tool use, scored by the environment),
# a plain echo domain, and a subprocess environment that crashes at every reset (each of its trajectories failed,
# counted, excluded; the job goes on). Checks metrics.jsonl's agent keys, eval.json's per-domain before/after, the
# dumped records' trajectories; that a run SIGKILLed while writing the first GRPO checkpoint and resumed ends with the
# uninterrupted run's metrics rows and weights bit for bit; and that a job refuses an agent domain without a chat
# format, with an unknown module or with rewards.
# Usage: agent_job_test.sh path/to/dsrl_train path/to/dsrl_tool MPIEXEC PYTHON
set -u
source "$(dirname "$0")/crash_checks.sh"
bin=$1
tool=$2
mpiexec=$3
python=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cat >"$tmp/job.yaml" <<YAML
run: {name: agent_test, output_dir: $tmp/run, seed: 3, stages: [sft, grpo]}
model: {vocab_size: 320, chat_format: deepseek_v32, thinking: true, hidden_size: 32, num_hidden_layers: 2,
        first_k_dense_replace: 1, n_routed_experts: 4, num_experts_per_tok: 2, index_topk: 64,
        max_position_embeddings: 640}
sft: {steps: 4, lr: 1.0e-3, max_seq_len: 640}
trainer: {total_steps: 2, micro_batch_size: 2, eval_prompts: 4, eval_every: 0, tensorboard: false,
          checkpoint: {every_steps: 1, keep_last: 2}}
rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 24, max_tool_calls: 3, context: discard_all}
grpo: {keep_routing: true, keep_sampling_mask: true}
domains:
  - {name: calc, weight: 2, data: "synthetic:arithmetic?digits=2&ops=*", environment: {module: calculator}}
  - {name: echo, weight: 1, data: "synthetic:echo?words=2", rewards: [{module: exact_match}]}
  - name: broken
    weight: 1
    data: "synthetic:arithmetic?digits=1"
    environment: {command: ["$python", "-c", "import sys; sys.exit(3)"], timeout_s: 5}
YAML
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/job.yaml" --check >"$tmp/check" 2>&1 ||
    { echo "FAIL: --check refused the agent job"; cat "$tmp/check"; exit 1; }
# The broken domain has no solver: the cold start leaves it out (a warning) and trains on the others.
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/job.yaml" --dump-rollouts "$tmp/rollouts" >"$tmp/log" 2>&1 ||
    { echo "FAIL: the agent job failed"; tail -40 "$tmp/log"; exit 1; }
grep -q "domain 'broken' is left out of the cold start" "$tmp/log" ||
    { echo "FAIL: no warning that the broken domain has no cold start"; tail -20 "$tmp/log"; exit 1; }
"$python" - "$tmp/run" <<'PY' || exit 1
import json, math, sys
run = sys.argv[1]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
grpo = [r for r in rows if r.get("stage") == "grpo" and "agent/tool_calls_per_trajectory" in r]
assert len(grpo) == 2, f"expected 2 grpo rows with agent metrics, got {len(grpo)}: {rows[-1]}"
for r in grpo:
    for k in ("agent/turns_per_trajectory", "agent/context_events", "agent/env_errors", "agent/trajectories"):
        assert k in r, f"metrics row lacks {k}: {sorted(r)}"
    assert r["agent/turns_per_trajectory"] > 0, r
errors = sum(r["agent/env_errors"] for r in grpo)
assert errors > 0, "the crashing environment's trajectories were not counted"
assert sum(r["reward_failed"] for r in grpo) > 0, "failed trajectories must count in reward_failed"
ev = json.load(open(f"{run}/eval.json"))
text = json.dumps(ev)
for d in ("calc", "echo"):
    assert d in text, f"eval.json has no domain {d}: {text[:400]}"
print("agent metrics:", {k: grpo[-1][k] for k in sorted(grpo[-1]) if k.startswith("agent/")})
PY
# Exact resume: killed in the job-step-5 checkpoint (the first GRPO step; 4 SFT steps before it), resumed from step 4.
sed "s|output_dir: $tmp/run|output_dir: $tmp/killed|" "$tmp/job.yaml" >"$tmp/killed.yaml"
DSRL_FAULT_KILL=in_checkpoint:5 "$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/killed.yaml" \
    >"$tmp/k1.log" 2>&1 && { echo "FAIL: the killed run exited 0"; exit 1; }
[ "$(cat "$tmp/killed/checkpoints/latest")" = "step-00000004" ] ||
    { echo "FAIL: latest is not step-00000004 after the kill"; tail -20 "$tmp/k1.log"; exit 1; }
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/killed.yaml" --resume auto >"$tmp/k2.log" 2>&1 ||
    { echo "FAIL: the resumed agent job failed"; tail -30 "$tmp/k2.log"; exit 1; }
same_steps_and_weights "$tmp/run" "$tmp/killed" step-00000006 || exit 1
# Another parallel layout of the same job: expert parallelism over the 2 ranks trains the same steps (multi-turn
# rounds joined across the group's ranks) — every GRPO metric within 1e-4 of the data-parallel run's.
sed "s|output_dir: $tmp/run|output_dir: $tmp/ep|" "$tmp/job.yaml" >"$tmp/ep.yaml"
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/ep.yaml" --set dist.expert_parallel_size=2 >"$tmp/ep.log" 2>&1 ||
    { echo "FAIL: the agent job under expert parallelism failed"; tail -30 "$tmp/ep.log"; exit 1; }
"$python" - "$tmp/run" "$tmp/ep" <<'PY' || exit 1
import json, sys
def grpo(d):
    return [r for r in map(json.loads, open(f"{d}/metrics.jsonl")) if r.get("stage") == "grpo"]
a, b = grpo(sys.argv[1]), grpo(sys.argv[2])
assert len(a) == len(b) == 2, (len(a), len(b))
for x, y in zip(a, b):
    for k, v in x.items():
        if isinstance(v, float) and "seconds" not in k and "per_s" not in k and not k.startswith("moe/"):
            assert abs(v - y[k]) <= 1e-4 * max(1.0, abs(v)), f"step {x['step']} {k}: {v} vs {y[k]} under EP 2"
print("expert parallelism 2: the same GRPO metrics as data parallelism")
PY
out=$(for f in "$tmp"/rollouts/*.dsrlroll; do "$tool" rollouts "$f" || echo "UNREADABLE $f"; done)
echo "$out" | grep -q UNREADABLE && { echo "FAIL: dsrl_tool rollouts could not read an agent record"; exit 1; }
echo "$out" | grep -q "trajectory: [1-9][0-9]* turns, [0-9]* tool calls" ||
    { echo "FAIL: the records hold no multi-turn trajectories"; echo "$out" | head -20; exit 1; }
echo "$out" | grep -q "trajectory: 0 turns.*FAILED: .*broken" ||
    { echo "FAIL: the records do not show the broken environment's failures"; echo "$out" | head -30; exit 1; }
# Refusals at start-up, naming the key.
"$bin" --config "$tmp/job.yaml" --set model.chat_format=byte --check 2>&1 | grep -q "chat_format" ||
    { echo "FAIL: an agent domain without a chat format must be refused naming model.chat_format"; exit 1; }
"$bin" --config "$tmp/job.yaml" --set 'domains[0].environment.module=calculater' --check 2>&1 |
    grep -q "unknown environment 'calculater'" ||
    { echo "FAIL: an unknown environment module must be refused"; exit 1; }
"$bin" --config "$tmp/job.yaml" --set 'domains[0].rewards=[{module: exact_match}]' --check 2>&1 | grep -q "rewards" ||
    { echo "FAIL: rewards on an agent domain must be refused"; exit 1; }
"$bin" --config "$tmp/job.yaml" --set 'domains[2].environment.command=[/nonexistent/env_bin]' --check 2>&1 |
    grep -q "domains\[broken\].environment.command: '/nonexistent/env_bin' does not exist or is not executable" ||
    { echo "FAIL: an environment command that cannot start must be refused naming it"; exit 1; }
grep -q "samples failed (excluded from the loss, counted in reward_failed); the first: domain 'broken'" "$tmp/log" ||
    { echo "FAIL: the log does not say why the broken domain's samples failed"; exit 1; }
# A job whose every sample fails stops (trainer.max_skipped_steps) instead of training nothing to the end.
"$bin" --config "$tmp/job.yaml" --set 'run.stages=[grpo]' --set 'domains=[{name: broken, data: "synthetic:arithmetic",
    environment: {command: [/bin/false]}}]' --set trainer.max_skipped_steps=2 --set trainer.total_steps=4 \
    --set run.output_dir="$tmp/all_failed" >"$tmp/all_failed.log" 2>&1 &&
    { echo "FAIL: a job whose every sample failed exited 0"; exit 1; }
grep -q "grpo step 2: the last 2 steps trained nothing (trainer.max_skipped_steps): every sample failed" \
    "$tmp/all_failed.log" || { echo "FAIL: no error for a job whose every sample failed"; tail -5 "$tmp/all_failed.log"; exit 1; }
echo "PASS: cold start, mixed agent GRPO, failures counted, records, exact resume, refusals"
