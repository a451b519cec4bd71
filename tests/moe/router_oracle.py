"""Oracle for tests/moe/router_parity_test.cpp: runs Hugging Face's DeepseekV32TopkRouter on random inputs
and writes inputs and outputs as JSON. Usage: router_oracle.py OUT.json"""
import json
import sys

import torch
from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32TopkRouter

torch.manual_seed(1234)
cases = []
# (experts, top-k, groups, kept groups, normalize, scaling)
for experts, k, groups, kept, norm, scale in [(16, 3, 4, 2, True, 2.5), (8, 2, 1, 1, True, 1.0),
                                               (32, 4, 8, 3, False, 1.5), (64, 6, 8, 4, True, 2.5)]:
    cfg = DeepseekV32Config(hidden_size=24, n_routed_experts=experts, num_experts_per_tok=k, n_group=groups,
                            topk_group=kept, norm_topk_prob=norm, routed_scaling_factor=scale)
    router = DeepseekV32TopkRouter(cfg)
    with torch.no_grad():
        router.weight.normal_()
        router.e_score_correction_bias.uniform_(-0.05, 0.05)
    x = torch.randn(40, 24)
    with torch.no_grad():
        logits, weights, indices = router(x)
    order = indices.argsort(dim=-1)  # compare as sets: sort ids, carry the weights along
    cases.append({
        "options": {"n_routed_experts": experts, "num_experts_per_tok": k, "n_group": groups, "topk_group": kept,
                    "norm_topk_prob": norm, "routed_scaling_factor": scale},
        "x": x.tolist(),
        "weight": router.weight.tolist(),
        "bias": router.e_score_correction_bias.tolist(),
        "logits": logits.tolist(),
        "indices": indices.gather(-1, order).tolist(),
        "weights": weights.gather(-1, order).tolist(),
    })
with open(sys.argv[1], "w") as f:
    json.dump(cases, f)
print(f"wrote {len(cases)} router cases to {sys.argv[1]}")
