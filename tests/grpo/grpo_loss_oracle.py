"""Cross-check of `dsrl_tool grpo-loss` against an independent PyTorch implementation of SPEC §5.

  grpo_loss_oracle.py OUT_DIR DSRL_TOOL

For several option sets it writes a batch (with padding, a failed reward, a single-sample group, an
all-equal group and an off-policy negative-advantage sequence), runs the tool, and compares the loss, the
metrics and d loss / d logp with the reference below (autograd through the formulas as written).
"""

import json
import math
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file


def reference(b, beta, delta, eps_low, eps_high, agg, adv_norm):
    logp = b["logp"].double().clone().requires_grad_(True)
    old, ref, valid = b["logp_old"].double(), b["logp_ref"].double(), b["valid"].double()
    rewards, group = b["rewards"].double(), b["group"]
    n = logp.shape[0]
    adv = torch.zeros(n, dtype=torch.float64)
    contributes = torch.zeros(n, dtype=torch.bool)
    for g in group.unique():
        idx = [i for i in range(n) if group[i] == g and not math.isnan(rewards[i])]
        if len(idx) < 2:
            continue
        r = rewards[idx]
        a = r - r.mean()
        if adv_norm == "std":
            s = r.std(unbiased=True)
            a = a / (s + 1e-6) if s > 0 else torch.zeros_like(a)
        adv[idx] = a
        contributes[idx] = True
    lens = valid.sum(1)
    ratio = torch.exp(torch.where(valid > 0, logp - old, torch.zeros_like(logp)))
    A = adv.unsqueeze(1)
    pg = torch.minimum(ratio * A, ratio.clamp(1 - eps_low, 1 + eps_high) * A)
    stat = (torch.where(valid > 0, old - logp.detach(), torch.zeros_like(logp))).sum(1) / lens.clamp_min(1)
    mask = (~((adv < 0) & (stat > delta))).double()
    d = torch.where(valid > 0, ref - logp, torch.zeros_like(logp))
    kl = ratio * (d.exp() - d - 1)
    per_tok = (pg * mask.unsqueeze(1) - beta * kl) * valid
    w = (contributes & (lens > 0)).double()
    if agg == "token_mean":
        J = (per_tok.sum(1) * w).sum() / (lens * w).sum()
    else:
        J = (per_tok.sum(1) / lens.clamp_min(1) * w).sum() / w.sum()
    loss = -J
    loss.backward()
    masked = ((1 - mask) * w).sum() / w.sum()
    kl_mean = (kl * valid * w.unsqueeze(1)).sum() / (valid * w.unsqueeze(1)).sum()
    return loss.item(), logp.grad, {"masked_seq_frac": masked.item(), "kl_mean": kl_mean.item()}


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    n, t = 10, 9
    logp = -1.5 + 0.4 * torch.randn(n, t, generator=g)
    old = logp + 0.2 * torch.randn(n, t, generator=g)
    ref = logp + 0.2 * torch.randn(n, t, generator=g)
    valid = torch.ones(n, t)
    valid[1, 4:] = 0
    valid[5, 1:] = 0  # a length-1 response
    old[1, 4:] = float("nan")  # padding may hold anything
    rewards = torch.rand(n, generator=g)
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])
    rewards[4] = float("nan")  # failed
    rewards[6] = rewards[7] = 0.5  # all-equal group
    rewards[0], rewards[1], rewards[2] = 0.0, 1.0, 1.0  # sample 0: negative advantage ...
    old[0] = logp[0] + 0.3  # ... far off-policy: masked
    return {"logp": logp, "logp_old": old, "logp_ref": ref, "valid": valid, "rewards": rewards, "group": group}


def main(out_dir, tool):
    worst = 0.0
    cases = [dict(beta=0.0, delta=0.1, eps_low=0.2, eps_high=0.2, agg="seq_mean", adv_norm="none"),
             dict(beta=0.05, delta=0.1, eps_low=0.2, eps_high=0.28, agg="seq_mean", adv_norm="none"),
             dict(beta=0.02, delta=0.05, eps_low=0.1, eps_high=0.3, agg="token_mean", adv_norm="std")]
    for k, c in enumerate(cases):
        b = batch(k)
        inp, gout = os.path.join(out_dir, f"grpo_in_{k}.safetensors"), os.path.join(out_dir, f"grpo_grad_{k}.safetensors")
        save_file({key: v.contiguous() for key, v in b.items()}, inp)
        sets = [f"grpo.beta={c['beta']}", f"grpo.delta={c['delta']}", f"grpo.eps_low={c['eps_low']}",
                f"grpo.eps_high={c['eps_high']}", f"grpo.loss_agg={c['agg']}", f"grpo.adv_norm={c['adv_norm']}"]
        cmd = [tool, "grpo-loss", "--input", inp, "--grad-output", gout]
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        got = json.loads(out)
        loss, grad, metrics = reference(b, c["beta"], c["delta"], c["eps_low"], c["eps_high"], c["agg"], c["adv_norm"])
        g = load_file(gout)["grad_logp"].double()
        errs = [abs(got["loss"] - loss), (g - grad).abs().max().item(),
                abs(got["masked_seq_frac"] - metrics["masked_seq_frac"]), abs(got["kl_mean"] - metrics["kl_mean"])]
        print(f"case {k} {c}: loss {got['loss']:.6f} (ref {loss:.6f}); max errors loss/grad/mask/kl = "
              + ", ".join(f"{e:.2e}" for e in errs))
        worst = max(worst, max(errs))
        if got["masked_seq_frac"] <= 0:
            print("the off-policy sequence was not masked")
            sys.exit(1)
    if not worst <= 1e-5:
        print(f"mismatch {worst}")
        sys.exit(1)
    # A bad key is a clear error.
    r = subprocess.run([tool, "grpo-loss", "--input", inp, "--grad-output", gout, "--set", "grpo.eps_lo=0.1"],
                       capture_output=True, text=True)
    print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")
    if r.returncode == 0 or "eps_lo" not in r.stderr:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
