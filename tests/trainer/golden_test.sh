#!/usr/bin/env bash
# Behaviour pin for refactors (issue 18): two short jobs whose metrics.jsonl were recorded before the
# architecture change (tests/trainer/golden/*.jsonl) must be reproduced value for value — every metric of every
# step except the wall-clock ones (seconds, tokens_per_s, eval_seconds, gpu_peak_mem_gib):
#   demo.jsonl: the embedded default (configs/demo.yaml) on 2 ranks, SFT 30 + GRPO 6 steps, evaluation at 0/3/6,
#               a checkpoint every 3 steps;
#   dsa.jsonl:  dense_lm 4 + indexer_warmup 4 + sparse_train 4 steps of the DSA experiment's model, 1 rank.
# DSRL_GOLDEN_RECORD=1 rewrites the recordings instead (only when behaviour is meant to change; say so in the
# commit). Usage: golden_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
bin=$1
mpiexec=$2
python=$3
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
"$mpiexec" --oversubscribe -np 2 "$bin" --set "run.output_dir=$tmp/demo" --set sft.steps=30 \
    --set trainer.total_steps=6 --set trainer.eval_every=3 --set trainer.eval_prompts=8 \
    --set trainer.checkpoint.every_steps=3 --set trainer.tensorboard=false >"$tmp/demo.log" 2>&1 ||
    { echo "FAIL: the demo job failed"; cat "$tmp/demo.log"; exit 1; }
"$mpiexec" --oversubscribe -np 1 "$bin" --set 'run.stages=[indexer_warmup, sparse_train]' --set run.device=cpu \
    --set "run.output_dir=$tmp/dsa" --set trainer.tensorboard=false --set trainer.checkpoint.every_steps=100000 \
    --set model.num_hidden_layers=2 --set model.num_attention_heads=2 --set model.index_topk=16 --set dsa.seq_len=128 \
    --set 'dsa.data=synthetic:retrieval?keys=16' --set dsa.batch_size=4 --set dsa.eval_batches=2 \
    --set dsa.dense_lm_steps=4 --set dsa.warmup_steps=4 --set dsa.sparse_steps=4 >"$tmp/dsa.log" 2>&1 ||
    { echo "FAIL: the DSA job failed"; cat "$tmp/dsa.log"; exit 1; }
if [ "${DSRL_GOLDEN_RECORD:-0}" = 1 ]; then
    cp "$tmp/demo/metrics.jsonl" "$here/golden/demo.jsonl"
    cp "$tmp/dsa/metrics.jsonl" "$here/golden/dsa.jsonl"
    echo "recorded $here/golden/demo.jsonl and dsa.jsonl"
    exit 0
fi
"$python" - "$here/golden" "$tmp" <<'PY'
import json, math, sys
golden, out = sys.argv[1], sys.argv[2]
clock = {"seconds", "tokens_per_s", "eval_seconds", "gpu_peak_mem_gib"}
bad = 0
for name in ("demo", "dsa"):
    want = [json.loads(l) for l in open(f"{golden}/{name}.jsonl")]
    got = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    if [(r["stage"], r["step"]) for r in want] != [(r["stage"], r["step"]) for r in got]:
        print(f"FAIL {name}: rows differ: want {[(r['stage'], r['step']) for r in want]}, "
              f"got {[(r['stage'], r['step']) for r in got]}")
        bad += 1
        continue
    n = 0
    for w, g in zip(want, got):
        keys = (set(w) | set(g)) - clock
        for k in sorted(keys):
            if k not in w or k not in g:
                print(f"FAIL {name} {w['stage']} step {w['step']}: key {k} only in {'golden' if k in w else 'this run'}")
                bad += 1
                continue
            a, b = w[k], g[k]
            same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
            if not same:
                print(f"FAIL {name} {w['stage']} step {w['step']} {k}: golden {a!r}, this run {b!r}")
                bad += 1
            n += 1
    print(f"{name}: {len(want)} rows, {n} values compared")
sys.exit(1 if bad else 0)
PY
