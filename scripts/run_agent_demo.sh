#!/usr/bin/env bash
# The agentic-RL demo (issue 20; configs/agent_demo.yaml): builds dsrl if needed, then on 2 CPU ranks a tiny model
# learns to answer two-digit multiplications by calling a calculator tool in DeepSeek-V3.2's chat format — the cold
# start (SFT on the environment's demonstrations), then GRPO on multi-turn trajectories mixed with a plain domain —
# and prints the held-out accuracy per domain before and after RL (runs/agent_demo/eval.json) and the agent metrics.
# Extra arguments go to dsrl_train, e.g.  bash scripts/run_agent_demo.sh --set trainer.total_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x build/bin/dsrl_train ]; then
    DSRL_CTEST_ARGS="-R dsrl_train_cli_errors" bash scripts/test.sh
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
fresh=(--set run.overwrite=true)
for a in "$@"; do [ "$a" = --resume ] && fresh=(); done
start=$(date +%s)
mpirun --oversubscribe -np 2 build/bin/dsrl_train --config configs/agent_demo.yaml "${fresh[@]}" "$@"
echo "run_agent_demo: $(( $(date +%s) - start )) s"
python=.venv/bin/python
[ -x "$python" ] || python=python3
out=$(build/bin/dsrl_train --config configs/agent_demo.yaml "$@" --print-config | sed -n 's/^  output_dir: *//p' |
    head -1 | tr -d '"')
"$python" - "${out:-runs/agent_demo}" <<'PY'
import json, sys
run = sys.argv[1]
ev = json.load(open(f"{run}/eval.json"))
print(json.dumps(ev, indent=1))
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
agent = [r for r in rows if "agent/tool_calls_per_trajectory" in r]
if agent:
    first, last = agent[0], agent[-1]
    for k in ("agent/tool_calls_per_trajectory", "agent/turns_per_trajectory", "agent/env_errors"):
        print(f"{k}: first step {first[k]:.3f}, last step {last[k]:.3f}")
PY
