#!/usr/bin/env bash
# dsrl_bench_rollout --profile on the CPU: the continuous engine's decode steps under PyTorch's profiler, ATen ops by
# self time per decode step (the tool that shows, on a GPU, which kernels a decode step spends its time in).
#   bench_profile_test.sh DSRL_BENCH_ROLLOUT DSRL_TOOL CONFIG
set -euo pipefail
bench=$1 tool=$2 config=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$tool" init --config "$config" --out "$dir/model" >/dev/null
"$bench" --model "$dir/model" --profile 3 --profile-top 1000 --compare 0 --hf 0 --new-tokens 6 --prompt-len 8 \
    --trace "$dir/trace.json" >"$dir/out.txt" 2>"$dir/err.txt" || { cat "$dir/out.txt" "$dir/err.txt"; exit 1; }
cat "$dir/out.txt"
fail() { echo "FAIL: $*"; exit 1; }
steps=$(sed -n 's/^profile of the continuous engine at batch 3 (CUDA graphs off): \([0-9]*\) decode steps.*/\1/p' "$dir/out.txt")
[[ -n $steps && $steps -ge 1 ]] || fail "no decode steps reported"
grep -qE "^profile: CPU ATen ops \(self time\): [0-9]+ calls, .*per decode step: [0-9.]+ calls" "$dir/out.txt" ||
    fail "no per-step summary"
# Every decode step runs the model's projections: at least one linear per layer per step.
calls=$(awk '$NF == "aten::linear" { print $1 }' "$dir/out.txt")
[[ -n $calls ]] && awk -v c="$calls" 'BEGIN { exit !(c >= 3) }' || fail "aten::linear per decode step: '$calls'"
[[ -s $dir/trace.json ]] || fail "no trace written"
grep -q '"traceEvents"' "$dir/trace.json" || fail "the trace is not a Chrome trace"
echo "ok: decode-step profile ($steps steps)"
