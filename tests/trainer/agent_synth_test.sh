#!/usr/bin/env bash
# Synthetic general-agent environments in a job (issue 20 items 5c, 6): dsrl_tool synth-envs writes worlds, tasks and
# cold-start rows; a 2-rank job whose agent domain reads tasks.jsonl (task rows) and serves them with the `synthetic`
# environment runs the cold start on the environment's demonstrations (its solver) and GRPO on multi-turn
# trajectories; the written cold_start.jsonl also trains as sft.data. Checks the files, --check, the metrics and
# eval.json. Usage: agent_synth_test.sh path/to/dsrl_train path/to/dsrl_tool MPIEXEC PYTHON
set -u
bin=$1
tool=$2
mpiexec=$3
python=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
"$tool" synth-envs --out "$tmp/envs" --envs 2 --tasks-per-env 3 --seed 5 >"$tmp/synth.log" 2>&1 ||
    { echo "FAIL: synth-envs failed"; cat "$tmp/synth.log"; exit 1; }
for f in envs.jsonl tasks.jsonl cold_start.jsonl; do
    [ -s "$tmp/envs/$f" ] || { echo "FAIL: synth-envs wrote no $f"; exit 1; }
done
[ "$(wc -l <"$tmp/envs/tasks.jsonl")" = 6 ] || { echo "FAIL: expected 6 tasks"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
run: {name: synth_test, output_dir: $tmp/run, seed: 4, stages: [sft, grpo]}
model: {vocab_size: 320, chat_format: deepseek_v32, thinking: true, hidden_size: 32, num_hidden_layers: 2,
        first_k_dense_replace: 1, n_routed_experts: 4, num_experts_per_tok: 2, index_topk: 64,
        max_position_embeddings: 4096}
sft: {steps: 2, lr: 1.0e-3, max_seq_len: 4096}
trainer: {total_steps: 1, micro_batch_size: 1, eval_prompts: 2, eval_every: 0, tensorboard: false,
          checkpoint: {every_steps: 0}}
rollout: {group_size: 2, prompts_per_step: 1, max_new_tokens: 16, max_tool_calls: 2}
domains:
  - name: trips
    data: $tmp/envs/tasks.jsonl
    environment: {module: synthetic, params: {envs: $tmp/envs/envs.jsonl}}
YAML
"$bin" --config "$tmp/job.yaml" --check >"$tmp/check" 2>&1 || { echo "FAIL: --check"; cat "$tmp/check"; exit 1; }
"$bin" --config "$tmp/job.yaml" --set 'domains[0].environment.params={envs: /nonexistent.jsonl}' --check 2>&1 |
    grep -q "nonexistent.jsonl" || { echo "FAIL: a missing envs file must be refused at start-up, named"; exit 1; }
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/job.yaml" >"$tmp/log" 2>&1 ||
    { echo "FAIL: the synthetic-environment job failed"; tail -40 "$tmp/log"; exit 1; }
# The written cold-start rows train as sft.data too.
"$mpiexec" --oversubscribe -np 2 "$bin" --config "$tmp/job.yaml" --set "sft.data=$tmp/envs/cold_start.jsonl" \
    --set 'run.stages=[sft]' --set run.overwrite=true >"$tmp/log2" 2>&1 ||
    { echo "FAIL: SFT on cold_start.jsonl failed"; tail -30 "$tmp/log2"; exit 1; }
"$python" - "$tmp/run" <<'PY' || exit 1
import json, math, sys
run = sys.argv[1]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
sft = [r for r in rows if r.get("stage") == "sft"]
assert sft and all(math.isfinite(r["loss"]) and r["tokens"] > 0 for r in sft), sft
print("sft on cold_start.jsonl:", [round(r["loss"], 3) for r in sft])
PY
grep -q "\[grpo\] step 1/1" "$tmp/log" || { echo "FAIL: no GRPO step in the job's log"; tail -20 "$tmp/log"; exit 1; }
grep -q "trips" "$tmp/log" || { echo "FAIL: no trips domain in the log"; exit 1; }
echo "PASS: synth-envs files, a job on its tasks (cold start from the solver, GRPO), SFT on cold_start.jsonl"
