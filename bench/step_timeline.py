#!/usr/bin/env python3
"""A graphed decode step's timeline from a `dsrl_bench_rollout --profile B --profile-graphs 1 --trace FILE` Chrome
trace (the replays' kernels traced one by one; no Nsight Systems needed): the device records (kernels, copies, sets)
cut into steps at each launch of the step's first kernel, the steps grouped by how many records they hold (the steady
steps, and the window's last steps with the flush's copies), and for each group the median span, the time busy, and
one median step's records with their offsets and the gap before each (negative: launched ahead under PDL).

    python3 bench/step_timeline.py TRACE.json[.gz] [--first paged_step_kernel] [--groups 2] [--head 6] [--tail 24]
"""
import argparse
import collections
import gzip
import json
import statistics


def load(path):
    with (gzip.open(path) if path.endswith(".gz") else open(path)) as f:
        ev = json.load(f)["traceEvents"]
    return sorted((e["ts"], e["dur"], e["name"]) for e in ev
                  if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--first", default="paged_step_kernel", help="a step's first kernel (a substring of its name)")
    ap.add_argument("--groups", type=int, default=2, help="step groups printed (most frequent record counts)")
    ap.add_argument("--head", type=int, default=6, help="records printed from a step's start")
    ap.add_argument("--tail", type=int, default=24, help="records printed before a step's end")
    a = ap.parse_args()
    rows = load(a.trace)
    starts = [i for i, r in enumerate(rows) if a.first in r[2]]
    if len(starts) < 2:
        raise SystemExit(f"fewer than two '{a.first}' records in {a.trace}: no step to cut")
    steps = [(rows[b][0] - rows[s][0], sum(d for _, d, _ in rows[s:b]), s, b) for s, b in zip(starts, starts[1:])]
    count = collections.Counter(b - s for _, _, s, b in steps)
    print(f"{len(steps)} steps; records per step (count: steps): {dict(count.most_common(6))}")
    for n, _ in count.most_common(a.groups):
        group = sorted(st for st in steps if st[3] - st[2] == n)
        span = statistics.median(st[0] for st in group)
        busy = statistics.median(st[1] for st in group)
        print(f"\n== {len(group)} steps of {n} records: span median {span:.1f} us (min {group[0][0]:.1f}), "
              f"records' time median {busy:.1f} us")
        _, _, s, b = group[len(group) // 2]
        t0, prev = rows[s][0], rows[s][0]
        print(f"{'at us':>8} {'us':>6} {'gap':>6}  record")
        for i, (ts, dur, name) in enumerate(rows[s:b]):
            if i < a.head or i >= (b - s) - a.tail:
                print(f"{ts - t0:8.1f} {dur:6.1f} {ts - prev:6.1f}  {name[:90]}")
            elif i == a.head:
                print(f"{'':>8} {'':>6} {'':>6}  ... {(b - s) - a.head - a.tail} records ...")
            prev = ts + dur
        print(f"{rows[b][0] - t0:8.1f} {'':>6} {rows[b][0] - prev:6.1f}  (the next step's first record)")


if __name__ == "__main__":
    main()
