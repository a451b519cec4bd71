#!/usr/bin/env python3
"""bench/step_timeline.py and bench/ncu_summary.py on inputs whose answers are known: a Chrome trace of four graphed
steps (three of 5 records, one of 7 with a flush's copies) and an ncu raw CSV of two kernels."""
import csv
import json
import os
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script, *args):
    r = subprocess.run([sys.executable, os.path.join(root, "bench", script), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_timeline(tmp):
    events, t = [], 0.0
    steps = [[("paged_step_kernel", 2), ("norm_kernel", 5), ("gemm", 4), ("sample_kernel", 3), ("Memcpy DtoD", 1)]] * 3
    steps.append(steps[0] + [("Memcpy DtoH", 2), ("cat", 1)])
    steps.append([("paged_step_kernel", 2)])
    for step in steps:
        for name, dur in step:
            events.append({"ph": "X", "cat": "gpu_memcpy" if name.startswith("Memcpy") else "kernel", "name": name,
                           "ts": t, "dur": dur})
            t += dur + 1.0  # a microsecond's gap after every record
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 100.0})  # not a device record
    path = os.path.join(tmp, "trace.json")
    with open(path, "w") as f:
        json.dump({"traceEvents": events}, f)
    out = run("step_timeline.py", path)
    assert "4 steps; records per step (count: steps): {5: 3, 7: 1}" in out, out
    assert "3 steps of 5 records: span median 20.0 us (min 20.0), records' time median 15.0 us" in out, out
    assert "1 steps of 7 records: span median 25.0 us" in out, out
    lines = run("step_timeline.py", path, "--head", "2", "--tail", "1", "--groups", "1").splitlines()
    assert lines[-4:] == ["     3.0    5.0    1.0  norm_kernel", "                        ... 2 records ...",
                          "    18.0    1.0    1.0  Memcpy DtoD", "    20.0           1.0  (the next step's first record)"], lines
    bad = subprocess.run([sys.executable, os.path.join(root, "bench", "step_timeline.py"), path, "--first", "nothing"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "fewer than two 'nothing' records" in bad.stderr, bad.stderr


def check_ncu(tmp):
    names = ["ID", "Kernel Name", "Grid Size", "Block Size", "launch__registers_per_thread", "gpu__time_duration.sum",
             "sm__warps_active.avg.pct_of_peak_sustained_active",
             "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
             "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
             "smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio"]
    units = ["", "", "", "", "register/thread", "us", "%", "ratio", "ratio", "ratio"]
    path = os.path.join(tmp, "raw.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerow(units)
        w.writerow(["0", "norm_kernel<0>(NormJobs)", "(784, 1, 1)", "(256, 1, 1)", "40", "8.70", "60.9", "2.9", "4.3",
                    "10.7"])
        w.writerow(["1", "route_tile_kernel<2>(RouteParams)", "(128, 1, 1)", "(256, 1, 1)", "101", "14.70", "8.8",
                    "0.1", "2.7", "0.9"])
    out = run("ncu_summary.py", path, "--stalls", "2")
    blocks = out.strip().split("\n")
    assert blocks[0] == "norm_kernel<0>(NormJobs)", out
    assert "grid (784, 1, 1), block (256, 1, 1), registers 40, us 8.70, warps active % 60.9" in blocks[1], out
    assert blocks[2] == "  stalls per issue: no_instruction 10.70, long_scoreboard 4.30", out
    assert blocks[5] == "  stalls per issue: long_scoreboard 2.70, no_instruction 0.90", out


with tempfile.TemporaryDirectory() as tmp:
    check_timeline(tmp)
    check_ncu(tmp)
print("profile scripts: ok")
