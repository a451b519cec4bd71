#!/usr/bin/env bash
# Colocated vs disaggregated GRPO on the same ranks (issue 22 item 7): the demo model's GRPO stage on NP ranks (default
# 3) colocated, then disaggregated with 1 rollout rank and NP-1 trainer ranks at max_policy_lag 0, 1 and 2. Prints, per
# run: generated (= trained) tokens per second of wall time, seconds per step, the trainers' idle fraction (waiting for
# groups) and the mean staleness. Steps after the first are measured.
#   bash scripts/bench_disaggregated.sh [NP] [STEPS]        # after building (build/bin/dsrl_train)
set -euo pipefail
cd "$(dirname "$0")/.."
np=${1:-3}
steps=${2:-8}
python=.venv/bin/python
[ -x "$python" ] || python=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
job=(--set 'run.stages=[grpo]' --set "trainer.total_steps=$steps" --set trainer.eval_prompts=0
     --set trainer.tensorboard=false --set trainer.checkpoint.every_steps=0 --set rollout.prompts_per_step=4
     --set rollout.group_size=8 --set rollout.max_new_tokens=48)
run() { local name=$1; shift; mpirun --oversubscribe -np "$np" build/bin/dsrl_train "${job[@]}" \
    --set "run.output_dir=$tmp/$name" "$@" >"$tmp/$name.log" 2>&1 || { tail -20 "$tmp/$name.log"; exit 1; }; }
run colocated
for lag in 0 1 2; do
    run "disaggregated_L$lag" --set dist.mode=disaggregated --set dist.rollout_ranks=1 --set "dist.max_policy_lag=$lag"
done
"$python" - "$tmp" "$np" <<'PY'
import json, os, sys
tmp, np = sys.argv[1], int(sys.argv[2])
print(f"GRPO on {np} CPU ranks (the demo model, G 8, 4 prompts per training rank per step, 48 new tokens)")
print(f"{'run':<20} {'train ranks':>11} {'tok/s':>8} {'s/step':>7} {'trainer idle':>12} {'staleness':>9}")
base = None
for name in ["colocated", "disaggregated_L0", "disaggregated_L1", "disaggregated_L2"]:
    rows = [json.loads(l) for l in open(os.path.join(tmp, name, "metrics.jsonl"))]
    g = [r for r in rows if r["stage"] == "grpo"][1:]
    secs = sum(r["seconds"] for r in g)
    tps = sum(r["generated_tokens"] for r in g) / secs
    idle = sum(r.get("trainer_wait_s", 0.0) for r in g) / secs
    stale = sum(r.get("staleness_mean", 0.0) for r in g) / len(g)
    base = base or tps
    ranks = np if name == "colocated" else np - 1
    print(f"{name:<20} {ranks:>11} {tps:>8.0f} {secs / len(g):>7.2f} {idle:>12.2f} {stale:>9.2f}   ({tps / base:.2f}x)")
PY
