"""Oracle for tests/dsa/rope_parity_test.cpp: transformers' DeepSeek-V3.2 RoPE (YaRN inverse frequencies,
attention factor, MLA softmax scale, interleaved and half-split rotations) on random inputs, as JSON.
Usage: rope_oracle.py OUT.json"""
import json
import sys

import torch
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as m
from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config

torch.manual_seed(7)
cases = []
for rope in [
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 64,
     "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0, "original_max_position_embeddings": 128,
     "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 0.5},
    {"rope_type": "default", "rope_theta": 10000.0},
]:
    cfg = DeepseekV32Config(hidden_size=64, num_attention_heads=4, qk_nope_head_dim=16, qk_rope_head_dim=16,
                            v_head_dim=16, max_position_embeddings=4096, rope_parameters=dict(rope))
    emb = m.DeepseekV32RotaryEmbedding(cfg)
    positions = torch.arange(0, 300, 7).unsqueeze(0)  # [1, S]
    q = torch.randn(1, 3, positions.shape[1], 16)
    k = torch.randn(1, 1, positions.shape[1], 16)
    cos, sin = emb(q, positions)
    qi, ki = m.apply_rotary_pos_emb_interleave(q, k, cos, sin)
    qh, kh = m.apply_rotary_pos_emb(q, k, cos, sin)
    cases.append({
        "rope": rope,
        "inv_freq": emb.inv_freq.tolist(),
        "attention_factor": float(emb.attention_scaling),
        "softmax_scale": float(m.yarn_apply_mscale(cfg.rope_parameters, (16 + 16) ** -0.5)),
        "positions": positions[0].tolist(),
        "q": q[0].tolist(),
        "interleaved": qi[0].tolist(),
        "half_split": qh[0].tolist(),
    })
with open(sys.argv[1], "w") as f:
    json.dump(cases, f)
print(f"wrote {len(cases)} rope cases to {sys.argv[1]}")
