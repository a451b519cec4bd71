// dsrl_bench_grpo: GRPO loss + backward time per 1K response tokens (policy forward with keep-routing and
// keep-sampling-mask, reference forward, loss, backward), for a tiny and a small model, beside a plain
// teacher-forced NLL step (forward, full log-softmax, backward) on the same tokens in the same process.
//
//   build/bin/dsrl_bench_grpo [--device cpu|cuda] [--samples 16] [--prompt 32] [--response 96] [--repeats 3]
//
// Figures, not pass/fail.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/tensor.h>

#include <absl/strings/str_cat.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/rng.h"
#include "grpo/logprobs.h"
#include "grpo/loss.h"

namespace {

using Clock = std::chrono::steady_clock;

dsrl::ModelConfig small_config() {
    dsrl::ModelConfig c;
    c.vocab_size = 8192;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 128;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.q_lora_rank = 128;
    c.kv_lora_rank = 128;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 32;
    c.n_routed_experts = 16;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
    c.index_n_heads = 4;
    c.index_head_dim = 64;
    c.index_topk = 64;
    c.max_position_embeddings = 4096;
    return c;
}

// Synthetic rollout samples with records produced by the model itself (routes, kept sets by top-p 0.95).
std::vector<dsrl::rollout::Sample> make_samples(const dsrl::dsa::Model& m,
                                                int64_t n,
                                                int64_t prompt,
                                                int64_t response) {
    const dsrl::ModelConfig& c = m.config();
    at::Generator gen = dsrl::rng::make_cpu_generator(9);
    std::vector<dsrl::rollout::Sample> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        dsrl::rollout::Sample& s = out[i];
        s.domain = "bench";
        s.prompt_id = i / 4;
        s.sample_index = static_cast<int32_t>(i % 4);
        s.vocab_size = c.vocab_size;
        const at::Tensor ids = at::randint(16, c.vocab_size, {prompt + response}, gen, at::kLong);
        for (int64_t t = 0; t < prompt + response; ++t) {
            (t < prompt ? s.prompt : s.response).push_back(static_cast<int32_t>(ids[t].item<int64_t>()));
        }
        s.reward = static_cast<float>(i % 2);
        at::NoGradGuard no_grad;
        const dsrl::dsa::ForwardOutput f = m.forward({ids.unsqueeze(0).to(m.device())}, {.return_routes = true});
        std::vector<at::Tensor> routes;
        for (const at::Tensor& r : f.routes) routes.push_back(r[0].cpu());
        s.set_routes(routes, c.n_routed_experts);
        for (int64_t t = 0; t < response; ++t) {
            // A kept set of ~5% of the vocabulary that contains the token.
            at::Tensor mask = at::rand({c.vocab_size}, gen).lt(0.05);
            mask[s.response[t]] = true;
            s.kept.push_back(dsrl::rollout::KeptSet::from_mask(mask));
            s.logprobs.push_back(-2.0f);
        }
    }
    return out;
}

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void bench(const char* name,
           const dsrl::ModelConfig& cfg,
           const std::string& device,
           int64_t n,
           int64_t prompt,
           int64_t response,
           int repeats) {
    dsrl::dsa::Model policy = dsrl::dsa::Model::random(cfg, 1, c10::Device(device));
    const dsrl::dsa::Model reference = dsrl::dsa::Model::random(cfg, 1, c10::Device(device));
    for (auto& t : policy.named_tensors()) {
        if (t.trainable) t.tensor->requires_grad_(true);
    }
    const auto samples = make_samples(policy, n, prompt, response);
    std::vector<const dsrl::rollout::Sample*> ptrs;
    for (const auto& s : samples) ptrs.push_back(&s);
    const dsrl::grpo::PackedBatch b = dsrl::grpo::pack_samples(ptrs, 0);
    const double tokens = static_cast<double>(n * response);
    const auto sync = [&] {
        if (device == "cuda") policy.weights().embed_tokens.sum().item<double>();
    };
    const auto zero_grads = [&] {
        for (auto& t : policy.named_tensors()) {
            if (t.tensor->grad().defined()) t.tensor->mutable_grad().zero_();
        }
    };
    double best_grpo = 1e30, best_nll = 1e30;
    for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up
        auto t0 = Clock::now();
        const dsrl::grpo::LogprobOptions opt{.temperature = 1.0, .chunk_tokens = 1024};
        const auto pi = dsrl::grpo::sequence_logprobs(policy, b, opt);
        at::Tensor ref_logp;
        {
            at::NoGradGuard no_grad;
            ref_logp = dsrl::grpo::sequence_logprobs(reference, b, opt).logp;
        }
        const auto adv = dsrl::grpo::compute_advantages(at::tensor(std::vector<float>(n, 0.5f)) + at::rand({n}),
                                                        at::arange(n, at::kLong).div(4, "floor"), dsrl::AdvNorm::kNone);
        const c10::Device dev = pi.logp.device();
        dsrl::grpo::LossInputs in{pi.logp,
                                  b.logp_old.to(dev),
                                  ref_logp,
                                  b.valid.to(dev),
                                  adv.adv.to(dev),
                                  adv.contributes.to(dev),
                                  at::full({n}, 0.01, at::kFloat).to(dev)};
        dsrl::grpo::grpo_loss(in, {}).loss.backward();
        sync();
        if (r > 0) best_grpo = std::min(best_grpo, seconds(t0));
        zero_grads();
        t0 = Clock::now();
        const dsrl::dsa::ForwardOutput f =
            policy.forward({b.input_ids.to(policy.device()), b.attention_mask.to(policy.device())});
        at::log_softmax(f.logits, -1).mean().backward();
        sync();
        if (r > 0) best_nll = std::min(best_nll, seconds(t0));
        zero_grads();
    }
    std::printf("%-6s | %9.1fM params | %6.0f | %14.1f | %14.1f | %8.2fx\n", name,
                dsrl::dsa::count_parameters(cfg).total / 1e6, tokens, best_grpo / tokens * 1000 * 1000,
                best_nll / tokens * 1000 * 1000, best_grpo / best_nll);
    std::fflush(stdout);
}

int run(int argc, char** argv) {
    std::string device = "cpu";
    int64_t n = 16, prompt = 32, response = 96;
    int repeats = 3;
    const bool go = dsrl::bench::Flags("dsrl_bench_grpo")
                        .text("--device", &device, "cpu or cuda")
                        .integer("--samples", &n, 1, "samples per batch")
                        .integer("--prompt", &prompt, 1, "prompt tokens per sample")
                        .integer("--response", &response, 1, "response tokens per sample")
                        .integer("--repeats", &repeats, 1, "best of this many runs")
                        .parse(argc, argv);
    if (!go) return 0;
    std::printf(
        "dsrl_bench_grpo: device %s, %ld samples x (%ld prompt + %ld response) tokens, best of %d; GRPO = "
        "policy logp (keep-routing, keep-sampling-mask) + reference logp + loss + backward; NLL = forward + "
        "full log-softmax + backward\n",
        device.c_str(), long(n), long(prompt), long(response), repeats);
    std::printf("%-6s | %16s | %6s | %14s | %14s | %9s\n", "model", "size", "tokens", "GRPO ms/1K tok", "NLL ms/1K tok",
                "GRPO/NLL");
    dsrl::ModelConfig tiny;
    tiny.max_position_embeddings = 4096;
    bench("tiny", tiny, device, n, prompt, response, repeats);
    bench("small", small_config(), device, n, prompt, response, repeats);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
