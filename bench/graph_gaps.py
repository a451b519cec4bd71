"""Where a graphed decode step's device time goes, from an Nsight Systems trace with graph nodes traced:

  nsys profile --trace=cuda --cuda-graph-trace=node -o r build/bin/dsrl_bench_rollout --model DIR --device cuda \
      --batches 256 --hf 0 --baselines 0
  nsys stats --report cuda_gpu_trace --format csv --output r r.nsys-rep
  python3 bench/graph_gaps.py r_cuda_gpu_trace.csv

Over the last 60% of the kernels (the decode steps, which dominate the records) it prints kernel time against the
span, the gaps between consecutive kernels (median, p90, the sum of those over 20 us) and the kernels by total time.
scripts/gpu_rollout_bench.sh runs it when nsys is installed.
"""
import csv, sys, collections
rows = []
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f):
        try:
            start = int(r.get("Start (ns)") or r.get("Start"))
            dur = int(r.get("Duration (ns)") or r.get("Duration"))
        except (TypeError, ValueError):
            continue
        rows.append((start, dur, r.get("Name", "?")))
rows.sort()
print("records", len(rows), "columns", list(r.keys())[:20])
if not rows:
    sys.exit()
# Split into bursts at idle gaps > 2 ms; the decode windows are the long bursts near the end.
bursts, cur = [], [rows[0]]
for a, b in zip(rows, rows[1:]):
    if b[0] - (a[0] + a[1]) > 2_000_000:
        bursts.append(cur)
        cur = []
    cur.append(b)
bursts.append(cur)
print("bursts (idle > 2 ms apart):", [(len(b), round((b[-1][0] + b[-1][1] - b[0][0]) / 1e6, 2)) for b in bursts][-12:])
# The whole run's kernels from the last burst group: take the last 60% of records as the decode.
tail = rows[int(len(rows) * 0.4):]
span = tail[-1][0] + tail[-1][1] - tail[0][0]
busy = sum(d for _, d, _ in tail)
gaps = [b[0] - (a[0] + a[1]) for a, b in zip(tail, tail[1:])]
gaps.sort()
print(f"last 60%: {len(tail)} records, span {span/1e6:.2f} ms, kernel time {busy/1e6:.2f} ms ({100*busy/span:.0f}%), "
      f"gaps median {gaps[len(gaps)//2]/1e3:.2f} us, p90 {gaps[int(len(gaps)*0.9)]/1e3:.2f} us, "
      f"sum of gaps > 20 us {sum(g for g in gaps if g > 20000)/1e6:.2f} ms in {sum(1 for g in gaps if g > 20000)}")
by = collections.defaultdict(lambda: [0, 0])
for _, d, n in tail:
    by[n[:110]][0] += 1
    by[n[:110]][1] += d
for n, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"{c:7d} {t/1e6:9.2f} ms {t/c/1e3:8.2f} us  {n}")
