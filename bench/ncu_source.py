#!/usr/bin/env python3
"""Where a kernel's instructions and stalls go, from Nsight Compute's source page (`ncu --section SourceCounters
--import-source yes`, then `ncu --import R --page source --csv --print-source sass > source.csv`): per kernel (the
first launch of each name), its SASS cut into segments at each barrier, cp.async commit / wait and exit, and for every
segment holding at least --min percent of the kernel's stall samples or instructions: its share of both and the kinds
of instruction in it (HMMA, LDGSTS, SHFL, ...). A segment with far more instructions than its work needs is where an
issue-bound kernel loses its time (docs/kernel_notes.md, session 29: the attention's staging, the sampling's sort).

    python3 bench/ncu_source.py source.csv[.gz] [--kernel REGEX] [--min 4] [--top 0]
"""
import argparse
import csv
import gzip
import re

CUTS = ("BAR.SYNC", "BAR.RED", "EXIT", "LDGDEPBAR", "DEPBAR")
KINDS = ("HMMA", "LDGSTS", "LDSM", "SHFL", "LDG", "STG", "LDS", "STS", "MUFU", "ATOM", "RED", "DADD", "DFMA", "FFMA")


def kernels(path):
    """(name, header, rows) for each kernel of the page, in order."""
    opener = gzip.open if path.endswith(".gz") else open
    out, name, header, rows = [], None, None, []
    with opener(path, "rt") as f:
        for r in csv.reader(f):
            if not r:
                continue
            if r[0] == "Kernel Name":
                if name is not None:
                    out.append((name, header, rows))
                name, header, rows = r[1], None, []
            elif r[0] == "Address":
                header = r
            elif name is not None and header is not None:
                rows.append(r)
    if name is not None:
        out.append((name, header, rows))
    return out


def opcode(sass):
    words = sass.strip().split()
    if not words:
        return ""
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--kernel", default="", help="only kernels whose name matches this regex")
    ap.add_argument("--min", type=float, default=4.0, help="segments under this percent of both are not printed")
    ap.add_argument("--top", type=int, default=0, help="also the N SASS lines with the most stall samples")
    a = ap.parse_args()
    seen = set()
    for name, header, rows in kernels(a.csv):
        if name in seen or (a.kernel and not re.search(a.kernel, name)):
            continue
        seen.add(name)
        i_s = header.index("Warp Stall Sampling (All Samples)")
        i_e = header.index("Instructions Executed")
        samples = [int(r[i_s] or 0) for r in rows]
        executed = [int(r[i_e] or 0) for r in rows]
        tot_s, tot_e = max(sum(samples), 1), max(sum(executed), 1)
        print(f"\n== {name[:110]}\n   {sum(executed):,} warp instructions executed, {sum(samples):,} stall samples, "
              f"{len(rows):,} SASS lines")
        start = 0
        for n, r in enumerate(rows):
            if not any(c in r[1] for c in CUTS) and n != len(rows) - 1:
                continue
            s, e = sum(samples[start:n + 1]), sum(executed[start:n + 1])
            if 100 * s / tot_s >= a.min or 100 * e / tot_e >= a.min:
                kinds = sorted({k for rr in rows[start:n + 1] for k in KINDS if opcode(rr[1]).startswith(k)})
                print(f"   lines {start:5d}-{n:5d}: stalls {100 * s / tot_s:5.1f}%  instructions {100 * e / tot_e:5.1f}%"
                      f"  ends {r[1].strip()[:30]:30s} {' '.join(kinds)}")
            start = n + 1
        if a.top > 0:
            print("   most stalled lines:")
            for n in sorted(range(len(rows)), key=lambda i: -samples[i])[:a.top]:
                print(f"   {n:5d} {100 * samples[n] / tot_s:5.1f}%  x{executed[n]:<8d} {rows[n][1].strip()[:80]}")


if __name__ == "__main__":
    main()
