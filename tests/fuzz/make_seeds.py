#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer harnesses (tests/fuzz/<harness>/seed_*; docs/fuzzing.md).

Run once with the project's venv (.venv/bin/python tests/fuzz/make_seeds.py); the outputs are committed. Each seed
is a small valid input of its parser, written independently of dsrl (Python's safetensors, the documented byte
layouts) so that the corpus also checks the formats' documentation.
"""
import json
import os
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(ROOT))


def write(harness, name, data):
    d = os.path.join(ROOT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# --- safetensors: real files written by Python's safetensors ------------------------------------------------------
def safetensors_seeds():
    import torch
    from safetensors.torch import save

    write("safetensors", "f32_bf16_meta", save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                                                  "b": torch.ones(3, dtype=torch.bfloat16)}, {"format": "pt"}))
    write("safetensors", "ints_scalar_empty", save({"i": torch.tensor([1, -2], dtype=torch.int64),
                                                     "s": torch.tensor(7, dtype=torch.int32),
                                                     "e": torch.zeros(0, 4, dtype=torch.float16),
                                                     "u": torch.tensor([1, 2, 3], dtype=torch.uint8)}))
    write("safetensors", "fp8_bool", save({"q": torch.zeros(2, 2, dtype=torch.float8_e4m3fn),
                                            "m": torch.tensor([True, False])}))


# --- rollout records: format v2/v1 (rollout/record.cpp, Note [Rollout record payload]) ----------------------------
def u8(v): return struct.pack("<B", v)
def i32(v): return struct.pack("<i", v)
def u64(v): return struct.pack("<Q", v)
def i64(v): return struct.pack("<q", v)
def f32(v): return struct.pack("<f", v)
def string(b): return u64(len(b)) + b
def i32s(v): return u64(len(v)) + b"".join(i32(x) for x in v)
def f32s(v): return u64(len(v)) + b"".join(f32(x) for x in v)


def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def gaps(keys):
    out, prev = b"", -1
    for k in keys:
        out += varint(k - prev)
        prev = k
    return out


def sample(version, prompt, response, kept=None, routes=None, indexer=None, k=0, vocab=64):
    b = string(b"math") + i64(3) + i32(0) + u64(42) + i64(5) + i32s(prompt) + i32s(response) + u8(0)
    b += f32s([-0.5] * len(response)) + i64(vocab)
    kept = kept if kept is not None else []
    b += u64(len(kept)) + b"".join(string(x) for x in kept)
    layers, top_k, width, raw = routes if routes else (0, 0, 1, b"")
    b += i32(layers) + i32(top_k) + u8(width) + string(raw)
    if version >= 2:
        indexer = indexer or []
        b += i32(k) + u64(len(indexer)) + b"".join(string(x) for x in indexer)
    return b + f32(1.0)


def payload(groups):
    b = u64(len(groups))
    for samples in groups:
        b += string(b"math") + i64(3) + u64(len(samples)) + b"".join(samples)
    return b


def framed(version, body):
    return b"DSRLROLL" + struct.pack("<I", version) + u64(len(body)) + body + struct.pack("<I", zlib.crc32(body))


def rollout_seeds():
    prompt, response = [1, 2, 3, 4], [5, 6, 7]
    n = len(prompt) + len(response)
    kept = [b"\x00", b"\x01" + varint(5) + varint(1), b"\x02" + bytes(8)]  # all; ids {5, 6}; empty-ish bitmap
    kept[2] = b"\x02" + bytes([0x80]) + bytes(7)                           # bitmap {7}
    routes = (2, 2, 1, bytes((i * 3) % 8 for i in range(2 * n * 2)))
    # Keep-indexer, k = 3: positions 3..6 coded; raw, delta, raw, delta.
    layer = varint(1) + gaps([0, 1, 3]) + varint(2) + gaps([1]) + gaps([4]) + varint(1) + gaps([0, 4, 5])
    layer += varint(2) + gaps([4]) + gaps([6])
    v2 = payload([[sample(2, prompt, response, kept, routes, [layer, layer], 3)],
                  [sample(2, [9], [], None, None, None, 0), sample(2, [8, 8], [1], [b"\x00"], None, None, 0)]])
    v1 = payload([[sample(1, prompt, response, kept, routes)]])
    write("rollout_record", "v2_framed", framed(2, v2))
    write("rollout_record", "v1_framed", framed(1, v1))
    write("rollout_record", "v2_payload", b"\x00" + v2)  # the harness frames it (first byte even: version 2)
    write("rollout_record", "v1_payload", b"\x01" + v1)
    write("rollout_record", "empty_payload", b"\x00" + u64(0))
    # indexer_sets: [num_tokens, k - 1, coded sets].
    write("indexer_sets", "n7_k3", bytes([7, 2]) + layer)
    write("indexer_sets", "n4_k4_implicit", bytes([4, 3]))
    write("indexer_sets", "n6_k1", bytes([6, 0]) + b"".join(varint(1) + gaps([p]) for p in range(1, 6)))
    write("indexer_sets", "n5_k2_delta", bytes([5, 1]) + varint(2) + gaps([0]) + gaps([2]) + varint(4) +
          gaps([1, 2]) + gaps([0, 3]) + varint(1) + gaps([2, 4]))


# --- job configs: the shipped ones, plus --set overrides ------------------------------------------------------------
def config_seeds():
    cfg_dir = os.path.join(REPO, "configs")
    for name in sorted(os.listdir(cfg_dir)):
        if name.endswith(".yaml"):
            with open(os.path.join(cfg_dir, name), "rb") as f:
                write("job_config", name, f.read())
    write("job_config", "overrides.yaml", "run:\n  name: fuzz\n#set grpo.eps_high=0.28\n#set domains.1.weight=2\n"
          "#set trainer.optimizer.lr=1e-6\n")
    write("job_config", "empty.yaml", "")


# --- JSONL prompt rows -------------------------------------------------------------------------------------------------
def prompt_seeds():
    rows = [{"prompt": "What is 2+3? Put the final answer in \\boxed{}.", "answer": "5"},
            {"prompt": "Say hi", "answer": "hi", "rubric": "polite", "domain": "chat", "id": 7, "extra": [1, {"a": None}]},
            {"prompt": "null fields", "answer": None, "id": None}]
    write("prompt_rows", "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    convs = [
        {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Weather in Paris?"}],
         "tools": tools, "answer": "sunny"},
        {"messages": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.",
                       "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                        "arguments": "{\"city\": \"Paris\"}"}}]},
                      {"role": "tool", "content": "{\"sky\": \"sunny\", \"t\": 21}"},
                      {"role": "assistant", "content": "It is sunny, 21 °C.", "reasoning_content": "Done."}],
         "tools": tools},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "developer", "content": "Be brief."}], "response": "Hi."},
    ]
    # Prompt rows end with a user or developer message or tool results; SFT rows may end with the assistant's turn.
    prompts = [convs[0], {"messages": convs[1]["messages"][:3], "tools": tools}, convs[2]]
    write("prompt_rows", "messages.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in prompts))
    write("prompt_rows", "messages_sft.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs[1:]))
    write("prompt_rows", "synthetic_arith", "synthetic:arithmetic?digits=3&ops=+-*&seed=4")
    write("prompt_rows", "synthetic_count", "synthetic:count?words=5")


# --- tokenizer.json (the tests' tiny BPE, and variants) --------------------------------------------------------------
def tokenizer_seeds():
    tiny = {
        "added_tokens": [{"id": 9, "content": "<eos>", "special": True, "normalized": False},
                         {"id": 10, "content": "<t>", "special": False, "normalized": False, "lstrip": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "bc": 5, "abc": 6, "Ġa": 7, "Ġab": 8},
                  "merges": ["b c", "a b", "a bc", ["Ġ", "a"], "Ġa b"]},
    }
    write("tokenizer_json", "tiny", json.dumps(tiny) + "\0ab <t>c<eos> abc\0" + json.dumps({"eos_token": "<eos>"}))
    seq = dict(tiny)
    seq["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"},
                                                              {"type": "Replace", "pattern": {"String": "x"}, "content": "a"}]}
    seq["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": True, "use_regex": False}]}
    seq["post_processor"] = {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<eos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [], "special_tokens": {"<eos>": {"id": "<eos>", "ids": [9], "tokens": ["<eos>"]}}}
    write("tokenizer_json", "sequence", json.dumps(seq) + "\0ABX 12345 cab\0{}")
    write("tokenizer_json", "no_text", json.dumps(tiny))


# --- chat output (deepseek_v32 completions) -------------------------------------------------------------------------
def chat_seeds():
    eos = "<｜end▁of▁sentence｜>"
    call = ("\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
            "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
            "<｜DSML｜invoke name=\"now\">\n</｜DSML｜invoke>\n</｜DSML｜function_calls>")
    # First byte: bit 0 = thinking, the rest the piece size of the stream parser.
    write("chat_output", "think_answer", b"\x03" + ("Let me add: 2+3=5.</think>The answer is \\boxed{5}." + eos).encode())
    write("chat_output", "chat_mode", b"\x08" + ("Hello! How can I help?" + eos).encode())
    write("chat_output", "tool_calls", b"\x05" + ("I need the weather.</think>" + call + eos).encode())
    write("chat_output", "unterminated", b"\x0b" + ("thinking...</think>partial" + call[:90]).encode())
    write("chat_output", "bad_json_param", b"\x00" + ("\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
                                                       "<｜DSML｜parameter name=\"x\" string=\"false\">{bad</｜DSML｜parameter>\n"
                                                       "</｜DSML｜invoke>\n</｜DSML｜function_calls>" + eos + "after").encode())


# --- checkpoint state: state.json \0 cursors.rank0.json ---------------------------------------------------------------
def checkpoint_seeds():
    state = {"step": 3, "stage_steps": {"sft": 2}, "policy_version": 3, "skipped_steps": 0, "world_size": 1,
             "optimizer_steps": 5, "config_yaml": "run:\n  name: demo\n"}
    cursors = {"prompts.reasoning": "1:2", "prompts.alignment": "0:17", "optimizer_steps": "5", "metrics_bytes": "1234",
               "tokens.dsa": "99", "eval_before": "{\"acc\": 0.5}"}
    write("checkpoint_state", "state_cursors", json.dumps(state, indent=2) + "\n\0" + json.dumps(cursors, indent=2))
    write("checkpoint_state", "state_only", json.dumps(dict(state, stage_steps={})))
    write("checkpoint_state", "other_world", json.dumps(dict(state, world_size=2)) + "\0{}")


if __name__ == "__main__":
    for gen in (safetensors_seeds, rollout_seeds, config_seeds, prompt_seeds, tokenizer_seeds, chat_seeds,
                checkpoint_seeds):
        gen()
    print("seeds written under", ROOT, file=sys.stderr)
