#!/usr/bin/env bash
# The README's first command: builds dsrl if needed, then runs the embedded default job (a tiny DSA-MoE
# model, SFT then GRPO on two synthetic domains) on 2 CPU ranks. Extra arguments go to dsrl_train, e.g.
#   bash scripts/run_demo.sh --set trainer.total_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x build/bin/dsrl_train ]; then
    DSRL_CTEST_ARGS="-R dsrl_train_cli_errors" bash scripts/test.sh
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
exec mpirun --oversubscribe -np 2 build/bin/dsrl_train "$@"
