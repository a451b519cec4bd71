#!/usr/bin/env bash
# The README's first command: builds dsrl if needed, then runs the embedded default job on 2 CPU ranks — a
# tiny DSA-MoE model, SFT on two synthetic domains (single-digit addition, echoing two words), then mixed
# GRPO with rule-based rewards — and ends with the accuracy before and after RL and a plot of reward and KL
# (runs/demo/metrics.png). About 2.5 minutes on 2 cores once built. Extra arguments go to dsrl_train, e.g.
#   bash scripts/run_demo.sh --set trainer.total_steps=50
#   bash scripts/run_demo.sh --resume auto          # continue an interrupted demo (else a new demo starts over)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x build/bin/dsrl_train ]; then
    DSRL_CTEST_ARGS="-R dsrl_train_cli_errors" bash scripts/test.sh
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# A second demo starts over (run.overwrite deletes the earlier demo's checkpoints and metrics), unless it resumes.
fresh=(--set run.overwrite=true)
for a in "$@"; do [ "$a" = --resume ] && fresh=(); done
mpirun --oversubscribe -np 2 build/bin/dsrl_train "${fresh[@]}" "$@"
out=$(build/bin/dsrl_train "$@" --print-config | sed -n 's/^  output_dir: *//p' | head -1 | tr -d '"')
out=${out:-runs/demo}
python=.venv/bin/python
[ -x "$python" ] || python=python3
"$python" scripts/plot_metrics.py "$out/metrics.jsonl" -o "$out/metrics.png" ||
    echo "run_demo: the plot was not written (see above); the metrics are in $out/metrics.jsonl"
