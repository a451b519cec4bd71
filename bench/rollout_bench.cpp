// dsrl_bench_rollout: decode throughput of batched generation with records (batch 1 / 8 / 32, ratio against
// batch 1 in the same process) and the bytes per token of each recorded field — kept set (keep-sampling-
// mask), routing path (keep-routing) and DSA key sets (keep-indexer, against 4 bytes per key raw) — at top_p 0.95
// and 1.0.
//
//   build/bin/dsrl_bench_rollout [--device cpu|cuda] [--new-tokens 64] [--vocab 4096] [--scale 0.3] [--index-topk 8]
//
// The model is the embedded default architecture (3 layers, 2 MoE, 8 experts, top-2) with a larger vocabulary
// and random weights scaled by --scale so the next-token distributions are peaked rather than uniform.
// Figures, not pass/fail.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/rng.h"
#include "rollout/generator.h"

namespace {

struct Result {
    double tok_per_s = 0;
    double kept_bytes = 0, route_bytes = 0, kept_size = 0, indexer_bytes = 0, indexer_raw = 0;
    int64_t tokens = 0, all_tokens = 0;
};

Result run_once(
    const dsrl::dsa::Model& m, const dsrl::text::Tokenizer& tok, int64_t batch, int64_t new_tokens, double top_p) {
    std::vector<dsrl::rollout::GenerationRequest> reqs;
    at::Generator gen = dsrl::rng::make_cpu_generator(batch);
    for (int64_t i = 0; i < batch; ++i) {
        std::vector<int32_t> prompt = {static_cast<int32_t>(tok.bos_id())};
        for (int j = 0; j < 31; ++j) prompt.push_back(static_cast<int32_t>(16 + (i * 31 + j * 7) % 256));
        reqs.push_back({"bench", i, 0, dsrl::rollout::sample_seed(1, i, 0), prompt});
    }
    dsrl::rollout::GenerateOptions opt{.sampling = {.temperature = 1.0, .top_p = top_p},
                                       .max_new_tokens = new_tokens,
                                       .max_batch_size = batch,
                                       .record_indexer = true};
    dsrl::rollout::GenerationStats stats;
    const auto samples = dsrl::rollout::generate(m, tok, reqs, opt, &stats);
    Result r;
    r.tok_per_s = stats.generated_tokens / std::max(stats.decode_seconds + stats.prefill_seconds, 1e-9);
    for (const auto& s : samples) {
        for (const auto& k : s.kept) {
            r.kept_bytes += static_cast<double>(k.bytes().size());
            r.kept_size += static_cast<double>(k.size());
        }
        r.route_bytes += static_cast<double>(s.routes.size());
        r.indexer_bytes += static_cast<double>(s.indexer_bytes());
        // Raw: every sparse-regime position's k keys as int32, per layer.
        r.indexer_raw += static_cast<double>(s.indexer.size()) *
                         static_cast<double>(std::max<int64_t>(0, s.num_tokens() - s.indexer_topk)) * s.indexer_topk *
                         4;
        r.tokens += static_cast<int64_t>(s.response.size());
        r.all_tokens += s.num_tokens();
    }
    return r;
}

int run(int argc, char** argv) {
    std::string device = "cpu";
    int64_t new_tokens = 64, vocab = 4096;
    double scale = 0.3;
    int64_t index_topk = 8;
    const bool go = dsrl::bench::Flags("dsrl_bench_rollout")
                        .text("--device", &device, "cpu or cuda")
                        .integer("--new-tokens", &new_tokens, 1, "tokens generated per sample")
                        .integer("--vocab", &vocab, 2, "vocabulary size")
                        .number("--scale", &scale, "std of the random weights")
                        .integer("--index-topk", &index_topk, 1, "DSA keys per query (sparse from that position on)")
                        .parse(argc, argv);
    if (!go) return 0;
    dsrl::ModelConfig c;
    c.vocab_size = vocab;
    c.max_position_embeddings = 4096;
    c.index_topk = index_topk;
    dsrl::dsa::Model m = dsrl::dsa::Model::random(c, 3, c10::Device(device));
    {
        at::NoGradGuard no_grad;
        at::Generator gen = dsrl::rng::make_cpu_generator(4);
        for (auto& t : m.named_tensors()) {
            if (t.name.find("norm") != std::string::npos || t.name.find("bias") != std::string::npos) continue;
            t.tensor->copy_(at::empty(t.tensor->sizes(), at::kFloat).normal_(0.0, scale, gen));
        }
    }
    const dsrl::text::ByteTokenizer tok(vocab);
    std::printf(
        "dsrl_bench_rollout: device %s, model %ld layers (%ld MoE, %ld experts top-%ld), vocab %ld, prompt 32 "
        "tokens, %ld new tokens per sample, temperature 1, DSA index_topk %ld\n",
        device.c_str(), long(c.num_hidden_layers), long(c.num_hidden_layers - c.first_k_dense_replace),
        long(c.n_routed_experts), long(c.num_experts_per_tok), long(vocab), long(new_tokens), long(c.index_topk));
    run_once(m, tok, 2, 4, 1.0);  // warm-up
    std::printf("%6s %6s | %12s %10s | %14s %16s %16s %16s %14s\n", "top_p", "batch", "decode tok/s", "vs batch1",
                "mean kept ids", "kept B/token", "route B/token", "indexer B/token", "indexer raw");
    for (const double top_p : {0.95, 1.0}) {
        double base = 0;
        for (const int64_t batch : {1, 8, 32}) {
            const Result r = run_once(m, tok, batch, new_tokens, top_p);
            if (batch == 1) base = r.tok_per_s;
            std::printf("%6.2f %6ld | %12.0f %9.2fx | %14.1f %16.2f %16.2f %16.2f %13.1fx\n", top_p, long(batch),
                        r.tok_per_s, r.tok_per_s / base, r.kept_size / r.tokens, r.kept_bytes / r.tokens,
                        r.route_bytes / r.all_tokens, r.indexer_bytes / r.all_tokens,
                        r.indexer_raw / std::max(r.indexer_bytes, 1.0));
            std::fflush(stdout);
        }
    }
    std::printf(
        "kept B/token: encoded kept set per sampled token; route B/token: routing path per prompt or "
        "response token (MoE layers x top-k x id bytes); indexer B/token: coded DSA key sets per prompt or response "
        "token (all layers); indexer raw: how much larger int32 keys of every sparse position would be.\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
