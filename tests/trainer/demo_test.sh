#!/usr/bin/env bash
# The demo in CI, shortened (issue 8): the embedded default job on 2 ranks with fewer SFT and GRPO steps.
# Passes when the job succeeds, the mean reward over the last 10 of 40 GRPO steps exceeds the first 10's,
# eval.json has before/after accuracy for both domains, TensorBoard events exist, and the plot is written.
# Usage: demo_test.sh path/to/dsrl_train MPIEXEC PYTHON
set -u
bin=$1
mpiexec=$2
python=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=warn
"$mpiexec" --oversubscribe -np 2 "$bin" --set run.output_dir="$tmp/demo" --set sft.steps=800 \
    --set trainer.total_steps=40 --set trainer.eval_every=0 --set trainer.log_every=10 >"$tmp/log" 2>&1 ||
    { echo "FAIL: the demo job failed"; cat "$tmp/log"; exit 1; }
grep "^\[eval\]\|^\[grpo\] step 40/" "$tmp/log"
"$python" - "$tmp/demo" <<'PY' || exit 1
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
grpo = [r for r in rows if r["stage"] == "grpo"]
assert len(grpo) == 40, f"expected 40 GRPO steps in metrics.jsonl, got {len(grpo)}"
def reward(r):  # mean over the domains a step drew
    v = [x for k, x in r.items() if k.startswith("reward_mean/")]
    return sum(v) / len(v)
first = sum(map(reward, grpo[:10])) / 10
last = sum(map(reward, grpo[-10:])) / 10
print(f"mean reward: steps 1-10 {first:.4f}, steps 31-40 {last:.4f}")
# Each stage starts a fresh optimizer: GRPO's schedule warms up from its own step 0 (not from SFT's count).
assert grpo[0]["lr"] < grpo[5]["lr"], ("GRPO did not warm up", grpo[0]["lr"], grpo[5]["lr"])
# Every step row has its time and a throughput that matches its global count (SFT: target tokens of both ranks).
for r in rows:
    if r["stage"] in ("sft", "grpo"):
        count = r["tokens"] if r["stage"] == "sft" else r["generated_tokens"]
        assert r["seconds"] > 0 and count > 0, r
        assert abs(r["tokens_per_s"] * r["seconds"] - count) <= 1e-6 * count, r
sft = [r for r in rows if r["stage"] == "sft"]
assert all(r["tokens"] == int(r["tokens"]) for r in sft), "SFT token counts must be whole global totals"
ev = json.load(open(f"{out}/eval.json"))
assert set(ev) == {"reasoning", "alignment"}, ev
for d, v in ev.items():
    assert v["before"] is not None and 0 <= v["after"] <= 1, (d, v)
if not last > first:
    sys.exit(f"FAIL: the reward did not rise ({first:.4f} -> {last:.4f})")
PY
ls "$tmp/demo/tb"/events.out.tfevents.* >/dev/null 2>&1 || { echo "FAIL: no TensorBoard event file"; exit 1; }
"$python" "$root/scripts/plot_metrics.py" "$tmp/demo/metrics.jsonl" -o "$tmp/demo/metrics.png" &&
    [ -s "$tmp/demo/metrics.png" ] || { echo "FAIL: plot_metrics.py did not write the PNG"; exit 1; }
echo "ok: the shortened demo ran, the reward rose, eval.json, TensorBoard events and the plot were written"
