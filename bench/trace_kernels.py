#!/usr/bin/env python3
"""The kernels of a `dsrl_bench_rollout --profile ... --trace FILE` Chrome trace, per decode step: each kernel with
the CPU op that launched it and that op's input shapes, inside the engine's `dsrl::decode_step` scopes only. Unlike
the profile table it finds a kernel's launching op by time on the launching thread, so it also lists kernels whose
profiler record is not linked to an ATen op.

    python3 bench/trace_kernels.py TRACE.json[.gz] [--steps N] [--top 60]
"""
import argparse
import bisect
import collections
import gzip
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--steps", type=float, default=0, help="decode steps (default: the number of decode scopes)")
    ap.add_argument("--top", type=int, default=60)
    a = ap.parse_args()
    with (gzip.open(a.trace) if a.trace.endswith(".gz") else open(a.trace)) as f:
        ev = json.load(f)["traceEvents"]
    ops = sorted((e for e in ev if e.get("cat") in ("cpu_op", "user_annotation") and e.get("ph") == "X"),
                 key=lambda e: e["ts"])
    starts = [o["ts"] for o in ops]
    launches = {e["args"].get("correlation"): e for e in ev
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and e.get("ph") == "X"}
    scopes = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev
                    if e.get("name") == "dsrl::decode_step" and e.get("cat") == "user_annotation" and e.get("ph") == "X")
    scope_starts = [s for s, _ in scopes]

    def in_scope(ts):
        i = bisect.bisect_right(scope_starts, ts) - 1
        return i >= 0 and scopes[i][0] <= ts <= scopes[i][1]

    def launching_op(ts, tid):  # the innermost op (not the decode scope) on that thread around ts
        best = None
        i = bisect.bisect_right(starts, ts) - 1
        while i >= 0 and i > bisect.bisect_right(starts, ts) - 400:
            o = ops[i]
            if o["tid"] == tid and o["ts"] <= ts <= o["ts"] + o["dur"] and o["name"] != "dsrl::decode_step":
                if best is None or o["dur"] < best["dur"]:
                    best = o
            i -= 1
        return best

    agg = collections.defaultdict(lambda: [0, 0.0])
    for k in ev:
        if k.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset") or k.get("ph") != "X":
            continue
        r = launches.get(k["args"].get("correlation"))
        if r is None or not in_scope(r["ts"]):
            continue
        o = launching_op(r["ts"], r["tid"])
        key = (k["name"][:70], o["name"] if o else "-", str(o["args"].get("Input Dims", ""))[:90] if o else "")
        agg[key][0] += 1
        agg[key][1] += k["dur"]
    steps = a.steps or max(len(scopes), 1)
    total = sum(v[1] for v in agg.values())
    calls = sum(v[0] for v in agg.values())
    print(f"{len(scopes)} decode scopes; per step: {total / steps:.0f} us of device time in {calls / steps:.1f} kernels")
    print(f"{'us/step':>9} {'calls':>6}  kernel | launched by, input shapes")
    for (name, op, dims), (c, us) in sorted(agg.items(), key=lambda x: -x[1][1])[:a.top]:
        print(f"{us / steps:9.1f} {c / steps:6.2f}  {name} | {op} {dims}")


if __name__ == "__main__":
    main()
