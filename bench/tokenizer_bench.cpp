// dsrl_bench_tokenizer: tokens/s of dsrl's tokenizer.json encoder against Python `tokenizers` (Rust, one thread:
// TOKENIZERS_PARALLELISM=false, encode_batch without special tokens) on the same corpus, in the same run; the
// token counts must agree. Best of --repeats for both (both keep their per-word caches warm after the first).
//
//   dsrl_bench_tokenizer --tokenizer build/oracle/tokenizers/deepseek_v3 --python .venv/bin/python
//
// The corpus (--corpus FILE: one JSON string per line) defaults to a deterministic mix of English prose, code,
// numbers, CJK, Cyrillic and emoji (--lines lines).
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/main_guard.h"
#include "text/hf_tokenizer.h"

namespace {

constexpr const char* kPythonBench = R"(
import json, os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
best, n = 1e30, 0
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    enc = tok.encode_batch(texts, add_special_tokens=False)
    best = min(best, time.perf_counter() - t)
    n = sum(len(e.ids) for e in enc)
print("RESULT", n, best)
)";

std::vector<std::string> synthetic_corpus(int64_t lines) {
    const std::vector<std::string> words = {"the",
                                            "of",
                                            "and",
                                            "to",
                                            "in",
                                            "is",
                                            "that",
                                            "for",
                                            "it",
                                            "as",
                                            "was",
                                            "with",
                                            "be",
                                            "by",
                                            "on",
                                            "not",
                                            "model",
                                            "training",
                                            "reinforcement",
                                            "learning",
                                            "policy",
                                            "gradient",
                                            "token",
                                            "attention",
                                            "sparse",
                                            "expert",
                                            "routing",
                                            "Hello",
                                            "world",
                                            "DeepSeek",
                                            "def",
                                            "return",
                                            "self",
                                            "import",
                                            "numpy",
                                            "x",
                                            "y",
                                            "for i in range(10):",
                                            "{\"key\": [1, 2, 3]}",
                                            "std::vector<int64_t>",
                                            "3.14159",
                                            "2024",
                                            "1,000,000",
                                            "你好",
                                            "世界",
                                            "模型",
                                            "训练",
                                            "こんにちは",
                                            "カタカナ",
                                            "한국어",
                                            "Привет",
                                            "мир",
                                            "naïve",
                                            "café",
                                            "😀",
                                            "👍🏽",
                                            "\n",
                                            "\n\n",
                                            "  ",
                                            "\t",
                                            ".",
                                            ",",
                                            "!",
                                            "?",
                                            "(",
                                            ")",
                                            ":",
                                            ";",
                                            "'s",
                                            "don't"};
    std::mt19937_64 rng(7);
    std::vector<std::string> out;
    out.reserve(static_cast<size_t>(lines));
    for (int64_t i = 0; i < lines; ++i) {
        std::string s;
        const int n = 20 + static_cast<int>(rng() % 180);
        for (int w = 0; w < n; ++w) {
            const std::string& word = words[rng() % words.size()];
            if (!s.empty() && word != "\n" && word != "." && word != ",") s += ' ';
            s += word;
        }
        out.push_back(std::move(s));
    }
    return out;
}

int run(int argc, char** argv) {
    std::string tokenizer, corpus, python = "python3";
    int64_t lines = 20000;
    int repeats = 3;
    const bool go = dsrl::bench::Flags("dsrl_bench_tokenizer")
                        .text("--tokenizer", &tokenizer, "directory with tokenizer.json (required)")
                        .text("--corpus", &corpus, "one JSON string per line (default: synthetic)")
                        .integer("--lines", &lines, 1, "lines of the synthetic corpus")
                        .text("--python", &python, "Python with the tokenizers package")
                        .integer("--repeats", &repeats, 1, "best of this many passes")
                        .parse(argc, argv);
    if (!go) return 0;
    if (tokenizer.empty()) throw dsrl::ConfigError("dsrl_bench_tokenizer: --tokenizer DIR is required");
    std::vector<std::string> texts;
    if (corpus.empty()) {
        texts = synthetic_corpus(lines);
    } else {
        dsrl::fs::LineReader in(corpus);
        for (std::string line; in.next(line);) texts.push_back(nlohmann::json::parse(line).get<std::string>());
    }
    const std::string dir = dsrl::fs::make_temp_dir("dsrl_bench_tokenizer_");
    const std::string corpus_file = dsrl::fs::join(dir, "corpus.jsonl");
    std::string jsonl;
    int64_t bytes = 0;
    for (const std::string& t : texts) {
        jsonl += nlohmann::json(t).dump() + "\n";
        bytes += static_cast<int64_t>(t.size());
    }
    dsrl::fs::write_file_atomic(corpus_file, {jsonl});

    const auto tok = dsrl::text::HfTokenizer::load(tokenizer);
    double best = 1e30;
    int64_t ours = 0;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        int64_t n = 0;
        for (const std::string& t : texts) n += static_cast<int64_t>(tok->encode(t).size());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        ours = n;
    }
    const std::string json_file = dsrl::fs::is_dir(tokenizer) ? dsrl::fs::join(tokenizer, "tokenizer.json") : tokenizer;
    const auto theirs = dsrl::bench::run_child(
        python, {"-c", kPythonBench, json_file, corpus_file, std::to_string(repeats)}, "dsrl_bench_tokenizer");
    dsrl::fs::remove_tree(dir);
    std::printf("dsrl_bench_tokenizer: %s, %zu texts, %.1f MB, one thread, best of %d\n", json_file.c_str(),
                texts.size(), bytes / 1e6, repeats);
    std::printf("%-22s | %10s | %12s | %10s\n", "encoder", "tokens", "tokens/s", "MB/s");
    std::printf("%-22s | %10ld | %12.0f | %10.2f\n", "dsrl (C++)", long(ours), ours / best, bytes / 1e6 / best);
    if (!theirs || theirs->size() < 2) {
        std::printf("tokenizers (Python)    | failed to run %s (needs the tokenizers package)\n", python.c_str());
        return 1;
    }
    const double their_tokens = (*theirs)[0], their_s = (*theirs)[1];
    std::printf("%-22s | %10.0f | %12.0f | %10.2f\n", "tokenizers (Rust)", their_tokens, their_tokens / their_s,
                bytes / 1e6 / their_s);
    std::printf("speed ratio dsrl / tokenizers: %.2fx%s\n", (ours / best) / (their_tokens / their_s),
                static_cast<double>(ours) == their_tokens ? "" : "  (token counts DIFFER)");
    return static_cast<double>(ours) == their_tokens ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
