"""Oracle for the DeepSeek-V3.2 model parity test (issue 4): transformers' DeepseekV32ForCausalLM.

  model_oracle.py write OUT_DIR   builds a tiny random model (sparsity active: index_topk < L; several MoE
                                  layers; n_group > 1; YaRN), saves it to OUT_DIR/model_hf, an FP8 block-quantized
                                  copy to OUT_DIR/model_fp8 and its dequantized fp32 twin to OUT_DIR/model_fp8_twin,
                                  and the oracle tensors (inputs, logits, per-layer top-k) to OUT_DIR/model.safetensors
  model_oracle.py tool OUT_DIR DSRL_TOOL
                                  runs `dsrl_tool forward` on OUT_DIR/model_hf with the oracle inputs and checks
                                  the logits and top-k tensors it writes
  model_oracle.py read OUT_DIR    loads OUT_DIR/model_saved (written by dsrl) with transformers and checks its
                                  logits against the oracle's
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

TOL = 1e-4
FP8_BLOCK = 8  # small blocks so the tiny weights span several (and ragged) blocks


def tiny_config():
    return DeepseekV32Config(
        vocab_size=96, hidden_size=48, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=4,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, index_n_heads=8,
        index_head_dim=8, index_topk=8, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
                         "mscale": 1.0, "mscale_all_dim": 1.0},
        attn_implementation="eager")


def randomize(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("k_norm.bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))


def inputs(vocab=96, L=24, seed=11, right=17, left=5):
    """Three rows of L tokens: unpadded, right-padded from `right`, left-padded before `left`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, L), generator=g)
    mask = torch.ones(3, L, dtype=torch.long)
    mask[1, right:] = 0  # right padding
    mask[2, :left] = 0   # left padding
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    return ids, mask, pos


def hf_forward(model, ids, mask, pos):
    topk = []
    hooks = [layer.self_attn.indexer.register_forward_hook(lambda m, a, out: topk.append(out))
             for layer in model.model.layers]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    for h in hooks:
        h.remove()
    # transformers keeps invisible keys (future or padding) among the top-k of short rows: mark them -1.
    L = ids.shape[1]
    key = torch.arange(L)
    visible = (key.view(1, 1, L) <= key.view(1, L, 1)) & mask.bool().view(-1, 1, L)
    out = []
    for t in topk:
        t = t.long()
        ok = visible.gather(2, t)
        out.append(torch.where(ok, t, torch.full_like(t, -1)).to(torch.int32))
    return logits, out


def fp8_quantize(w):
    r, c = w.shape
    br, bc = -(-r // FP8_BLOCK), -(-c // FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK)
    padded[:r, :c] = w
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12)
    scale = amax / 448.0
    q = (blocks / scale.view(br, 1, bc, 1)).view(br * FP8_BLOCK, bc * FP8_BLOCK)[:r, :c].to(torch.float8_e4m3fn)
    deq = (q.float().view(r, c) *
           scale.repeat_interleave(FP8_BLOCK, 0)[:r].repeat_interleave(FP8_BLOCK, 1)[:, :c])
    return q, scale.float(), deq


def write(out_dir):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = DeepseekV32ForCausalLM(cfg).eval()
    randomize(model)
    hf_dir = os.path.join(out_dir, "model_hf")
    model.save_pretrained(hf_dir)
    ids, mask, pos = inputs()
    logits, topk = hf_forward(model, ids, mask, pos)
    oracle = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "logits": logits.contiguous()}
    for i, t in enumerate(topk):
        oracle[f"topk_indices.{i}"] = t.contiguous()
    save_file(oracle, os.path.join(out_dir, "model.safetensors"))

    # FP8 twin pair: projection weights block-quantized; the twin holds exactly the dequantized values.
    state = load_file(os.path.join(hf_dir, "model.safetensors"))
    fp8, twin = {}, {}
    for name, w in state.items():
        quantize = (w.dim() == 2 and name.endswith("proj.weight") and "weights_proj" not in name
                    and "mlp.gate." not in name)
        if quantize:
            q, scale, deq = fp8_quantize(w)
            fp8[name] = q
            fp8[name.replace(".weight", ".weight_scale_inv")] = scale
            twin[name] = deq
        else:
            fp8[name] = w
            twin[name] = w
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    for sub, tensors, quant in (("model_fp8", fp8, True), ("model_fp8_twin", twin, False)):
        d = os.path.join(out_dir, sub)
        os.makedirs(d, exist_ok=True)
        c = dict(config)
        if quant:
            c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                        "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {hf_dir}, FP8 pair ({sum(1 for k in fp8 if k.endswith('scale_inv'))} quantized weights) and oracle")


def read(out_dir):
    oracle = load_file(os.path.join(out_dir, "model.safetensors"))
    saved = os.path.join(out_dir, "model_saved")
    model = DeepseekV32ForCausalLM.from_pretrained(saved, attn_implementation="eager", dtype=torch.float32).eval()
    logits, _ = hf_forward(model, oracle["input_ids"], oracle["attention_mask"], oracle["position_ids"])
    real = oracle["attention_mask"].bool()
    diff = (logits - oracle["logits"]).abs()[real].max().item()
    print(f"transformers on the dsrl-saved checkpoint: max |logits diff| = {diff:.3g} (tolerance {TOL})")
    if not diff <= TOL:
        sys.exit(1)


def tool(out_dir, dsrl_tool):
    import subprocess
    oracle = load_file(os.path.join(out_dir, "model.safetensors"))
    inp, outp = os.path.join(out_dir, "tool_in.safetensors"), os.path.join(out_dir, "tool_out.safetensors")
    save_file({"input_ids": oracle["input_ids"], "attention_mask": oracle["attention_mask"].bool()}, inp)
    subprocess.run([dsrl_tool, "forward", "--model", os.path.join(out_dir, "model_hf"), "--input", inp,
                    "--output", outp], check=True)
    got = load_file(outp)
    real = oracle["attention_mask"].bool()
    ok = got["logits"].dtype == torch.float32 and got["logits"].shape == oracle["logits"].shape
    diff = (got["logits"] - oracle["logits"]).abs()[real].max().item()
    layers = sorted(k for k in got if k.startswith("topk_indices."))
    ok = ok and len(layers) == 4 and all(got[k].dtype == torch.int32 and got[k].shape == oracle[k].shape
                                         for k in layers)
    print(f"dsrl_tool forward: max |logits diff| = {diff:.3g}; {len(layers)} top-k tensors")
    if not (ok and diff <= TOL):
        sys.exit(1)
    # Bad input: a missing input_ids is a clear error, not a crash.
    save_file({"tokens": oracle["input_ids"]}, inp)
    r = subprocess.run([dsrl_tool, "forward", "--model", os.path.join(out_dir, "model_hf"), "--input", inp,
                        "--output", outp], capture_output=True, text=True)
    print(r.stderr.strip().splitlines()[-1])
    if r.returncode == 0 or "input_ids" not in r.stderr:
        sys.exit(1)


if __name__ == "__main__":
    {"write": write, "read": read, "tool": tool}[sys.argv[1]](*sys.argv[2:])
