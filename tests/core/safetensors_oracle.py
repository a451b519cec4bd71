"""Two-way safetensors check with the Python `safetensors` library (the oracle).
  safetensors_oracle.py write DIR  -> DIR/py_written.safetensors (+ DIR/safetensors.json with the values)
  safetensors_oracle.py read DIR   -> loads DIR/dsrl_written.safetensors (written by SafetensorsParityTest)
                                      and checks its values and metadata"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

mode, out_dir = sys.argv[1], sys.argv[2]
if mode == "write":
    g = torch.Generator().manual_seed(3)
    tensors = {
        "model.embed_tokens.weight": torch.randn(5, 4, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_a_proj.weight": torch.randn(3, 4, generator=g).to(torch.float8_e4m3fn),
        "model.layers.0.self_attn.q_a_proj.weight_scale_inv": torch.rand(1, 1, generator=g),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }
    save_file(tensors, f"{out_dir}/py_written.safetensors", metadata={"format": "pt"})
    values = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.float().flatten().tolist()}
              for k, v in tensors.items()}
    json.dump(values, open(f"{out_dir}/safetensors.json", "w"))
    print("wrote", len(tensors), "tensors")
else:
    path = f"{out_dir}/dsrl_written.safetensors"
    got = load_file(path)
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "writer": "dsrl"}, f.metadata()
    assert got["a"].dtype == torch.bfloat16 and torch.equal(got["a"].float(), torch.arange(6.0).view(2, 3)), got["a"]
    assert got["b"].dtype == torch.int32 and torch.equal(got["b"], torch.tensor([3, 1, 4, 1, 5], dtype=torch.int32))
    assert got["c"].dtype == torch.float32 and got["c"].shape == (0, 2)
    print("dsrl-written file loads in safetensors with the expected values")
