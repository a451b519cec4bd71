"""Oracle for MoeParityTest: transformers' DeepseekV32MoE (router + routed experts + shared experts) on random
weights and inputs, as JSON. transformers packs each expert's gate and up projections as gate_up_proj
[E, 2I, H] (gate first). Usage: moe_oracle.py OUT.json"""
import json
import sys

import torch
from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32MoE

torch.manual_seed(11)
cfg = DeepseekV32Config(hidden_size=16, moe_intermediate_size=12, n_routed_experts=8, num_experts_per_tok=2,
                        n_group=2, topk_group=1, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True)
moe = DeepseekV32MoE(cfg)
with torch.no_grad():
    for p in moe.parameters():
        p.normal_(0, 0.3)
    moe.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
x = torch.randn(2, 15, 16)
with torch.no_grad():
    y = moe(x)
inter = cfg.moe_intermediate_size
out = {
    "x": x.reshape(-1, 16).tolist(),
    "y": y.reshape(-1, 16).tolist(),
    "gate": moe.gate.weight.tolist(),
    "bias": moe.gate.e_score_correction_bias.tolist(),
    "experts_gate_proj": moe.experts.gate_up_proj[:, :inter, :].tolist(),
    "experts_up_proj": moe.experts.gate_up_proj[:, inter:, :].tolist(),
    "experts_down_proj": moe.experts.down_proj.tolist(),
    "shared_gate_proj": moe.shared_experts.gate_proj.weight.tolist(),
    "shared_up_proj": moe.shared_experts.up_proj.weight.tolist(),
    "shared_down_proj": moe.shared_experts.down_proj.weight.tolist(),
}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
print(f"wrote the MoE block case to {sys.argv[1]}")
