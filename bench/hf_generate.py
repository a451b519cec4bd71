"""Hugging Face generate() on a dsrl checkpoint: the baseline dsrl_bench_rollout --model runs beside dsrl.

  hf_generate.py MODEL_DIR PROMPTS.json BATCH NEW_TOKENS TOP_P DEVICE EOS_ID

PROMPTS.json holds lists of token ids (all of one length, so no padding); the first BATCH are generated with
do_sample, temperature 1, top_p TOP_P, up to NEW_TOKENS new tokens each, ending at EOS_ID. One warm-up call, then
one timed call. Prints "RESULT tokens seconds": the tokens generated (each row's up to and including its EOS) and the
wall time of the timed call.
"""

import json
import sys
import time

import torch
from transformers import DeepseekV32ForCausalLM


def main():
    model_dir, prompts_path, batch, new, top_p, device, eos = sys.argv[1:8]
    batch, new, top_p, eos = int(batch), int(new), float(top_p), int(eos)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = DeepseekV32ForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    with open(prompts_path) as f:
        prompts = json.load(f)[:batch]
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=top_p, top_k=0,
                  eos_token_id=eos, pad_token_id=eos)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        model.generate(ids, max_new_tokens=min(new, 8), **kwargs)  # warm-up
        sync()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, **kwargs)
        sync()
        secs = time.perf_counter() - t0
    gen = out[:, ids.shape[1]:].cpu()
    tokens = 0
    for row in gen.tolist():
        n = len(row)
        if eos in row:
            n = row.index(eos) + 1
        tokens += n
    print(f"RESULT {tokens} {secs}", flush=True)


if __name__ == "__main__":
    main()
