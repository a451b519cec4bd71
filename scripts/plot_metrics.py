#!/usr/bin/env python3
"""Plots a dsrl run's metrics.jsonl: reward per domain and KL over GRPO steps (with held-out accuracy).

    python scripts/plot_metrics.py runs/demo/metrics.jsonl -o runs/demo/metrics.png

Reads the JSON lines dsrl_train writes (one per step; "stage" is sft, grpo or eval) and writes a PNG with
three panels: the SFT loss, the mean reward per domain with the KL term of the GRPO stage, and the greedy
accuracy per domain at each evaluation. A running mean smooths the noisy per-step rewards (--smooth N).
"""
import argparse
import json
import math
import sys


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot_metrics: {path}:{n}: not a JSON line ({e.msg})")
    return rows


def series(rows, stage, key):
    pts = [(r["step"], r[key]) for r in rows if r.get("stage") == stage and key in r]
    return [p for p in pts if p[1] is not None and math.isfinite(p[1])]


def smooth(values, n):
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > n:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="metrics.jsonl written by dsrl_train")
    ap.add_argument("-o", "--output", default=None, help="PNG path (default: next to the metrics file)")
    ap.add_argument("--smooth", type=int, default=10, help="running-mean window for rewards (steps)")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics: matplotlib is not installed (pip install matplotlib; scripts/setup.sh installs it)")
    rows = load(args.metrics)
    if not rows:
        sys.exit(f"plot_metrics: {args.metrics} has no metrics yet")
    out = args.output
    if out is None:
        out = (args.metrics.rsplit("/", 1)[0] + "/" if "/" in args.metrics else "") + "metrics.png"

    domains = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("reward_mean/")})
    eval_domains = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("accuracy/")})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    ax = axes[0]
    sft = series(rows, "sft", "loss")
    if sft:
        ax.plot([s for s, _ in sft], [v for _, v in sft], color="tab:gray")
    ax.set_title("SFT loss")
    ax.set_xlabel("SFT step")

    ax = axes[1]
    for d in domains:
        pts = series(rows, "grpo", f"reward_mean/{d}")
        if pts:
            ax.plot([s for s, _ in pts], smooth([v for _, v in pts], args.smooth), label=f"reward {d}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(f"mean reward (running mean of {args.smooth})")
    kl = series(rows, "grpo", "kl_mean")
    if kl:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in kl], [v for _, v in kl], color="black", linestyle=":", label="KL")
        ax2.set_ylabel("KL(π‖π_ref), unbiased estimator")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title("GRPO: reward per domain and KL")

    ax = axes[2]
    for d in eval_domains:
        pts = series(rows, "eval", f"accuracy/{d}")
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=d)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("GRPO step")
    ax.set_title("held-out accuracy (greedy)")
    if eval_domains:
        ax.legend()

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot_metrics: wrote {out}")


if __name__ == "__main__":
    main()
