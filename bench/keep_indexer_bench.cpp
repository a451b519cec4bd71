// dsrl_bench_keep_indexer: how far the DSA top-k of the rollout's decode is from the training forward's, and what
// keep-indexer (grpo.keep_indexer) does about it (issue 24, docs/benchmarks.md). One process:
//   1. generate G samples per prompt with the records on (log-probs, kept sets, routes, indexer key sets) — on CUDA
//      under bf16 autocast, as dsrl_train's rollout runs;
//   2. a teacher-forced forward of every sample (the training forward, same precision) returns its own top-k: the
//      fraction of (position, layer) sets that differ from the recorded ones, and of tokens with any differing layer;
//   3. GRPO's log-probs (keep-routing and keep-sampling-mask on) with and without the recorded sets replayed, against
//      the recorded behaviour log-probs: mean |Δ log p|, and the spread of the ratio π/π_old (std, max |r − 1|).
//
//   build/bin/dsrl_bench_keep_indexer [--config configs/single_gpu.yaml] [--device cpu|cuda] [--prompts 8]
//       [--group 4] [--prompt-len 192] [--new-tokens 128] [--scale 0.05]
//
// The architecture comes from the job config (its model section; random weights scaled by --scale so the
// next-token distributions are peaked). Figures, not pass/fail.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>

#include <absl/strings/str_format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/main_guard.h"
#include "core/precision.h"
#include "core/rng.h"
#include "grpo/logprobs.h"
#include "rollout/generator.h"
#include "trainer/config.h"

namespace {

struct Mismatch {
    double mean_abs = 0, ratio_std = 0, ratio_max_dev = 0;
};

Mismatch logprob_mismatch(const dsrl::dsa::Model& m,
                          const dsrl::grpo::PackedBatch& b,
                          bool replay_indexer,
                          double temperature) {
    at::NoGradGuard no_grad;
    const dsrl::grpo::LogprobOptions opt{
        .replay_routes = true, .apply_kept = true, .temperature = temperature, .replay_indexer = replay_indexer};
    const at::Tensor lp = dsrl::grpo::sequence_logprobs(m, b, opt).logp.cpu();
    const at::Tensor valid = b.valid.gt(0);
    const at::Tensor delta = (lp - b.logp_old).masked_select(valid).to(at::kDouble);
    const at::Tensor ratio = at::exp(delta);
    return {delta.abs().mean().item<double>(), ratio.std().item<double>(), (ratio - 1).abs().max().item<double>()};
}

int run(int argc, char** argv) {
    std::string config = "configs/single_gpu.yaml", device = at::hasCUDA() ? "cuda" : "cpu";
    int64_t prompts = 8, group = 4, prompt_len = 192, new_tokens = 128;
    double scale = 0.05;
    const bool go = dsrl::bench::Flags("dsrl_bench_keep_indexer")
                        .text("--config", &config, "job config whose model section gives the architecture")
                        .text("--device", &device, "cpu or cuda")
                        .integer("--prompts", &prompts, 1, "prompts")
                        .integer("--group", &group, 1, "samples per prompt")
                        .integer("--prompt-len", &prompt_len, 1, "prompt tokens")
                        .integer("--new-tokens", &new_tokens, 1, "tokens generated per sample")
                        .number("--scale", &scale, "std of the random weights")
                        .parse(argc, argv);
    if (!go) return 0;
    const dsrl::JobConfig job = dsrl::load_job_config(config, {});
    dsrl::ModelConfig c = job.model;
    c.path.clear();
    c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, prompt_len + new_tokens + 1);
    const c10::Device dev(device);
    dsrl::dsa::Model m = dsrl::dsa::Model::random(c, 3, dev);
    {
        at::NoGradGuard no_grad;
        at::Generator gen = dsrl::rng::make_cpu_generator(4);
        for (auto& t : m.named_tensors()) {
            if (t.name.find("norm") != std::string::npos || t.name.find("bias") != std::string::npos) continue;
            t.tensor->copy_(at::empty(t.tensor->sizes(), at::kFloat).normal_(0.0, scale, gen));
        }
    }
    const dsrl::AutocastScope amp(dev, dev.is_cuda());  // dsrl_train's precision: bf16 matmuls on CUDA
    const dsrl::text::ByteTokenizer tok(c.vocab_size);
    std::vector<dsrl::rollout::Prompt> ps;
    for (int64_t i = 0; i < prompts; ++i) {
        std::vector<int32_t> ids = {static_cast<int32_t>(tok.bos_id())};
        for (int64_t j = 1; j < prompt_len; ++j) ids.push_back(static_cast<int32_t>(16 + (i * 131 + j * 7) % 200));
        ps.push_back({"bench", i, ids});
    }
    const dsrl::rollout::GenerateOptions gopt{.sampling = {.temperature = 1.0, .top_p = 0.95},
                                              .max_new_tokens = new_tokens,
                                              .max_batch_size = prompts * group,
                                              .record_indexer = true};
    std::printf(
        "dsrl_bench_keep_indexer: device %s (%s), model %s: %ld layers, hidden %ld, index_topk %ld, impl %s; %ld "
        "prompts x %ld samples, prompt %ld + up to %ld new tokens\n",
        device.c_str(), dev.is_cuda() ? "bf16 autocast" : "fp32", config.c_str(), long(c.num_hidden_layers),
        long(c.hidden_size), long(c.index_topk),
        c.impl == dsrl::Impl::kReference ? "reference" : (c.impl == dsrl::Impl::kCuda ? "cuda" : "auto"), long(prompts),
        long(group), long(prompt_len), long(new_tokens));
    const auto groups = dsrl::rollout::generate_groups(m, tok, ps, group, gopt, 7);

    // 2. The training forward's own top-k against the recorded sets.
    int64_t sets = 0, differing = 0, tokens = 0, tokens_differing = 0;
    double overlap_sum = 0;
    std::vector<const dsrl::rollout::Sample*> all;
    for (const auto& g : groups) {
        for (const auto& s : g.samples) {
            all.push_back(&s);
            std::vector<int64_t> ids(s.prompt.begin(), s.prompt.end());
            ids.insert(ids.end(), s.response.begin(), s.response.end());
            at::NoGradGuard no_grad;
            std::vector<at::Tensor> routes;
            for (int32_t j = 0; j < s.num_moe_layers; ++j) routes.push_back(s.route_tensor(j).unsqueeze(0));
            const dsrl::dsa::ForwardOutput out =
                m.forward({at::tensor(ids, at::kLong).unsqueeze(0).to(dev)},
                          {.return_logits = false, .return_topk = true, .replay_routes = &routes});
            std::vector<at::Tensor> recorded, forward;
            for (size_t l = 0; l < s.indexer.size(); ++l) {
                recorded.push_back(s.indexer_sets(static_cast<int32_t>(l)).to(at::kLong));
                forward.push_back(std::get<0>(out.topk[l][0].sort(1)).cpu().to(at::kLong));
            }
            for (int64_t p = s.indexer_topk; p < s.num_tokens(); ++p) {
                bool any = false;
                for (size_t l = 0; l < recorded.size(); ++l) {
                    ++sets;
                    if (at::equal(recorded[l][p], forward[l][p])) continue;
                    ++differing;
                    any = true;
                    // Keys both selected (sorted lists: count the intersection).
                    const at::Tensor ra = recorded[l][p].contiguous(), fb = forward[l][p].contiguous();
                    const int64_t* a = ra.const_data_ptr<int64_t>();
                    const int64_t* b = fb.const_data_ptr<int64_t>();
                    const int64_t n = ra.size(0);
                    int64_t i = 0, j = 0, both = 0;
                    while (i < n && j < n) {
                        if (a[i] == b[j]) {
                            ++both, ++i, ++j;
                        } else if (a[i] < b[j]) {
                            ++i;
                        } else {
                            ++j;
                        }
                    }
                    overlap_sum += static_cast<double>(both) / static_cast<double>(s.indexer_topk);
                }
                ++tokens;
                tokens_differing += any ? 1 : 0;
            }
        }
    }
    std::printf("sparse positions %ld, (position, layer) sets %ld\n", long(tokens), long(sets));
    std::printf("  sets differing from the training forward's top-k: %.4f%% (overlap of a differing set: %.2f%%)\n",
                100.0 * differing / std::max<int64_t>(sets, 1),
                differing > 0 ? 100.0 * overlap_sum / static_cast<double>(differing) : 100.0);
    std::printf("  tokens with a differing set in some layer:        %.4f%%\n",
                100.0 * tokens_differing / std::max<int64_t>(tokens, 1));

    // 3. GRPO's log-probs against the behaviour log-probs, without and with the sets replayed.
    const dsrl::grpo::PackedBatch b = dsrl::grpo::pack_samples(all, tok.pad_id());
    std::printf("%-22s | %14s %14s %16s\n", "log-probs vs recorded", "mean |dlogp|", "ratio std", "max |ratio - 1|");
    for (const bool replay : {false, true}) {
        const Mismatch mm = logprob_mismatch(m, b, replay, 1.0);
        std::printf("%-22s | %14.3e %14.3e %16.3e\n", replay ? "keep_indexer on" : "keep_indexer off", mm.mean_abs,
                    mm.ratio_std, mm.ratio_max_dev);
    }
    std::printf("(keep-routing and keep-sampling-mask on in both rows)\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
