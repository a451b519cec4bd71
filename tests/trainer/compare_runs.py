"""Compares two dsrl_train runs that should train the same weights (other parallel layouts of one job).

  compare_runs.py ROOT BASE OTHER [--exact | --bound B] [--floor F]

ROOT/BASE and ROOT/OTHER are run directories. Compared: loss and grad_norm of every (stage, step) both
metrics.jsonl files hold — relative difference with an absolute floor of 1e-8 (an on-policy GRPO loss is ~0 up to
rounding) — and every tensor of the latest checkpoint's model (model.safetensors or its shard files) as ||a - b|| / ||a||. Passes within
1e-5 (the issue's bound), or with --exact only when both are 0 (bit for bit), or within B. Prints one line; exits 1 on
failure.

--bound is for jobs whose gradients nearly cancel, such as a GRPO stage of a tiny random model that no prompt rewards
(advantages 0, only the KL term): there a layout's summation order moves grad_norm by ~1e-4 relative, and Adam, which
divides each gradient by its own scale, turns that into updates of either sign on the elements whose gradient is
rounding noise. The bound says how much of that the caller accepts.

--floor F is the absolute floor of the metrics' difference (default 1e-8): an on-policy GRPO loss is a sum of terms
of order 0.1 that cancel to ~0, so on layouts of different per-rank sizes (1 rank against 2) its rounding is a few
1e-8 absolute.
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def rows(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {(r["stage"], r["step"]): r for r in map(json.loads, f)}


def weights(run):
    """Every tensor of the latest checkpoint's model, whichever files hold it (one file, or one per writer)."""
    ck = os.path.join(run, "checkpoints")
    with open(os.path.join(ck, "latest")) as f:
        model = os.path.join(ck, f.read().strip(), "model")
    out = {}
    for name in sorted(os.listdir(model)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(model, name)))
    return out


def main():
    argv = sys.argv[1:]
    exact = "--exact" in argv
    bound = 0.0 if exact else 1e-5
    if "--bound" in argv:
        i = argv.index("--bound")
        bound = float(argv[i + 1])
        del argv[i : i + 2]
    floor = 0.0 if exact else 1e-8
    if "--floor" in argv:
        i = argv.index("--floor")
        floor = float(argv[i + 1])
        del argv[i : i + 2]
    args = [a for a in argv if a != "--exact"]
    root, base, other = args
    a, b = rows(os.path.join(root, base)), rows(os.path.join(root, other))
    common = sorted(set(a) & set(b))
    worst, where = 0.0, "-"
    for key in common:
        for name in ("loss", "grad_norm"):
            if name not in a[key] or name not in b[key]:
                continue
            x, y = a[key][name], b[key][name]
            rel = max(abs(x - y) - floor, 0.0) / max(abs(x), 1e-12)
            if rel >= worst:
                worst, where = rel, f"{key[0]} step {key[1]} {name} {x:.9g} vs {y:.9g}"
    wa, wb = weights(os.path.join(root, base)), weights(os.path.join(root, other))
    differ = set(wa) ^ set(wb)
    wdiff = max(float(np.linalg.norm(wa[k].astype("float64") - wb[k]) /
                      max(np.linalg.norm(wa[k].astype("float64")), 1e-12)) for k in wa if k in wb)
    ok = common and not differ and worst <= bound and wdiff <= bound
    print(f"{'ok  ' if ok else 'FAIL'} {other} vs {base}: {len(common)} steps, metrics rel diff {worst:.1e} "
          f"(worst: {where}), final weights ({len(wa)} tensors) rel diff {wdiff:.1e}"
          f"{' (want 0)' if exact else f' (bound {bound:g})'}{'; tensors differ: ' + str(differ) if differ else ''}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
