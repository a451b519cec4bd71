#!/usr/bin/env bash
# The DSA acceptance experiment (issue 9, docs/dsa_training.md), through dsrl_train on CPU:
#   1. dense_lm (dsa.dense_lm_steps, the pre-phase of indexer_warmup): the tiny default model learns the
#      synthetic:retrieval task with dense attention (a dense-trained model to convert). 2 layers of 2 heads,
#      L = 128, k = L/8 = 16: idle layers and heads keep a diffuse attention whose best possible recall at k
#      stays below 0.9 (the [dsa_eval] lines print that bound); docs/dsa_training.md reports 5 seeds, of which
#      3 pass both criteria below; CI runs the default seed (1234). Extra flags: DSA_EXPERIMENT_ARGS;
#   2. indexer_warmup: the indexer learns the dense attention; recall at k = L/8 must rise from its initial
#      value to >= 0.9, or to 95% of the best possible recall where the dense model bounds it below 0.9/0.95 (the
#      trajectory, hence the bound, depends on the CPU's rounding: on CI's AVX-512 machine the default seed's
#      dense model bounds it at 0.857);
#   3. sparse_train (k = L/8): the task loss on the sparse path must stay within 10% of the dense model's.
# Asserts from metrics.jsonl (stage dsa_eval: the held-out evaluation at the start and end of each DSA stage).
# Usage: dsa_experiment.sh path/to/dsrl_train PYTHON [output_dir]   (DSA_EXPERIMENT_SCALE=full: longer run)
set -u
bin=$1
python=$2
out=${3:-}
if [ -z "$out" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
steps=(--set dsa.dense_lm_steps=1500 --set dsa.warmup_steps=150 --set dsa.sparse_steps=100)
[ "${DSA_EXPERIMENT_SCALE:-ci}" = full ] &&
    steps=(--set dsa.dense_lm_steps=4000 --set dsa.warmup_steps=400 --set dsa.sparse_steps=400)
"$bin" --set 'run.stages=[indexer_warmup, sparse_train]' --set run.device=cpu --set "run.output_dir=$out" \
    --set run.log_level=warn --set trainer.tensorboard=false --set trainer.checkpoint.every_steps=100000 --set trainer.log_every=25 \
    --set model.num_hidden_layers=2 --set model.num_attention_heads=2 --set model.index_topk=16 --set dsa.seq_len=128 \
    --set 'dsa.data=synthetic:retrieval?keys=16' --set dsa.batch_size=8 --set dsa.eval_batches=4 --set dsa.dense_lm_lr=3e-3 --set dsa.indexer_lr=1e-3 \
    --set dsa.lr=1e-4 "${steps[@]}" ${DSA_EXPERIMENT_ARGS:-} || { echo "FAIL: dsrl_train failed"; exit 1; }
"$python" - "$out/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ev = {(r["stage_id"], r["at_end"]): r for r in rows if r["stage"] == "dsa_eval"}
w0, w1, s1 = ev[(1, 0)], ev[(1, 1)], ev[(2, 1)]
dense = w0["task_loss_dense"]
print(f"dense model: task loss (dense attention) {dense:.4f}; chance {__import__('math').log(16):.4f}")
print(f"best possible recall at k=L/8 (the k heaviest keys of the dense attention): {w0['recall_oracle_mean']:.3f}")
print(f"indexer_warmup: recall@k=L/8 {w0['recall_mean']:.3f} -> {w1['recall_mean']:.3f} "
      f"(task loss on the top-k path {w0['task_loss_sparse']:.4f} -> {w1['task_loss_sparse']:.4f})")
print(f"sparse_train: task loss sparse {s1['task_loss_sparse']:.4f} vs dense model {dense:.4f} "
      f"(ratio {s1['task_loss_sparse'] / dense:.3f}); recall {s1['recall_mean']:.3f}")
ok = True
# Every step row reports its time and the throughput of its 8 × 128-token batch (1 rank).
for r in rows:
    if r["stage"] in ("dense_lm", "indexer_warmup", "sparse_train"):
        if not (r["seconds"] > 0 and abs(r["tokens_per_s"] * r["seconds"] - 8 * 128) < 1e-6 * 8 * 128):
            print("FAIL: step metrics seconds/tokens_per_s", r); ok = False
            break
# Recall is bounded by the dense model (the k heaviest keys of its attention, recall_oracle): a trajectory whose dense
# model keeps a diffuse head cannot reach 0.9 with any selection. So: 0.9, or 95% of that bound where it is lower.
need = min(0.9, 0.95 * w0["recall_oracle_mean"])
if not w1["recall_mean"] >= need or not w1["recall_mean"] > w0["recall_mean"]:
    print(f"FAIL: recall after indexer_warmup must be >= {need:.3f} (0.9, or 95% of the best possible) and above its "
          "initial value"); ok = False
if not s1["task_loss_sparse"] <= 1.1 * dense:
    print("FAIL: sparse_train task loss is more than 10% above the dense model's"); ok = False
sys.exit(0 if ok else 1)
PY
