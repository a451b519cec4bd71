#!/usr/bin/env python3
"""One block of figures per kernel from an Nsight Compute raw CSV (`ncu --csv --page raw`, sections SpeedOfLight,
LaunchStats, Occupancy, WarpStateStats): grid and block, registers, duration, warps active, memory and SM throughput,
and the largest stall reasons in warp cycles per issued instruction. ncu locks the clocks and flushes the caches
between its passes, so its durations run higher than a trace's; the stalls say what a kernel waits on.

    ncu --kernel-name-base function --kernel-name regex:'norm_kernel|route_tile' --launch-skip 2400 --launch-count 60 \\
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \\
        --csv --page raw BINARY ARGS > raw.csv
    python3 bench/ncu_summary.py raw.csv [--stalls 6]
"""
import argparse
import csv

FIELDS = [("grid", "Grid Size"), ("block", "Block Size"), ("registers", "launch__registers_per_thread"),
          ("us", "gpu__time_duration.sum"), ("warps active %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
          ("memory %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
          ("SM %", "sm__throughput.avg.pct_of_peak_sustained_elapsed")]
STALL = ("smsp__average_warps_issue_stalled_", "_per_issue_active.ratio")


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--stalls", type=int, default=6, help="stall reasons printed per kernel")
    a = ap.parse_args()
    with open(a.csv) as f:
        rows = [r for r in csv.reader(f) if r]
    head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    names = rows[head]
    col = {n: i for i, n in enumerate(names)}
    stalls = [n for n in names if n.startswith(STALL[0]) and n.endswith(STALL[1])]
    for r in rows[head + 1:]:
        if len(r) != len(names) or number(r[col.get("gpu__time_duration.sum", 0)]) is None:
            continue  # the units row, or a malformed line
        figures = ", ".join(f"{label} {r[col[key]]}" for label, key in FIELDS if key in col)
        top = sorted(((number(r[col[n]]) or 0.0, n[len(STALL[0]):-len(STALL[1])]) for n in stalls), reverse=True)
        print(f"{r[col['Kernel Name']][:100]}\n  {figures}\n  stalls per issue: " +
              ", ".join(f"{name} {v:.2f}" for v, name in top[:a.stalls]))


if __name__ == "__main__":
    main()
