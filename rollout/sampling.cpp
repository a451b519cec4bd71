#include "rollout/sampling.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/scatter.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <limits>

namespace dsrl::rollout {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

bool truncates(const SamplingParams& p, int64_t vocab) {
    return (p.top_k > 0 && p.top_k < vocab) || p.min_p > 0 || p.top_p < 1;
}

at::Tensor processed_logprobs(const at::Tensor& logits, const SamplingParams& p) {
    TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "sampling: logits must be [B, V], got ", logits.sizes());
    TORCH_CHECK(p.temperature >= 0 && p.top_p > 0 && p.top_p <= 1 && p.top_k >= 0 && p.min_p >= 0 && p.min_p <= 1,
                "sampling: invalid parameters (temperature ", p.temperature, ", top_p ", p.top_p, ", top_k ", p.top_k,
                ", min_p ", p.min_p, ")");
    const at::Tensor x = logits.to(at::kFloat);
    const int64_t vocab = x.size(1);
    if (p.greedy()) {
        const at::Tensor best = at::argmax(x, -1, /*keepdim=*/true);
        return at::full_like(x, kNegInf).scatter(1, best, 0.0);
    }
    const at::Tensor scaled = x / p.temperature;
    const at::Tensor logp = at::log_softmax(scaled, -1);
    if (!truncates(p, vocab)) return logp;
    // Work in descending-probability order; a stable sort makes ties keep the lower id.
    auto [sorted, order] = at::sort(logp, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
    const at::Tensor rank = at::arange(vocab, order.options()).unsqueeze(0);
    at::Tensor keep = at::ones_like(sorted, sorted.options().dtype(at::kBool));
    if (p.top_k > 0 && p.top_k < vocab) keep = keep.logical_and(rank < p.top_k);
    if (p.min_p > 0) keep = keep.logical_and(sorted >= sorted.narrow(1, 0, 1) + std::log(p.min_p));
    if (p.top_p < 1) {
        // Mass before each token (over what top-k/min-p kept): keep while it is still below top_p.
        const at::Tensor probs = at::where(keep, sorted.exp(), at::zeros_like(sorted)).to(at::kDouble);
        const at::Tensor before = at::cumsum(probs, -1) - probs;
        keep = keep.logical_and(before < p.top_p);
    }
    keep = keep.logical_or(rank == 0);  // the most likely token always survives
    const at::Tensor kept = at::zeros_like(keep).scatter(1, order, keep);
    const at::Tensor masked = at::where(kept, scaled, at::full_like(scaled, kNegInf));
    return at::log_softmax(masked, -1);
}

at::Tensor draw_uniforms(std::vector<at::Generator>& gens) {
    const int64_t rows = static_cast<int64_t>(gens.size());
    at::Tensor u = at::empty({rows, 1}, at::kDouble);
    double* p = u.data_ptr<double>();
    // What at::rand({1}, gen, kDouble) draws (ATen's CPU uniform kernel: one uniform_real_distribution<double> draw
    // under the generator's lock), without a tensor per row: a decode window draws rows x steps of them.
    at::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (int64_t b = 0; b < rows; ++b) {
        at::CPUGeneratorImpl* g = at::check_generator<at::CPUGeneratorImpl>(gens[b]);
        const std::lock_guard<std::mutex> lock(g->mutex_);
        p[b] = 1.0 - uniform(g);
    }
    return u;
}

at::Tensor sample_with_uniforms(const at::Tensor& logp, const at::Tensor& u) {
    TORCH_CHECK(logp.dim() == 2 && u.dim() == 2 && u.size(0) == logp.size(0) && u.size(1) == 1,
                "sample_with_uniforms: logp [B, V] and u [B, 1], got ", logp.sizes(), " and ", u.sizes());
    const at::Tensor cdf = at::cumsum(logp.to(at::kDouble).exp(), -1);  // [B, V]
    const at::Tensor target = u.to(cdf.device(), at::kDouble) * cdf.narrow(1, cdf.size(1) - 1, 1);
    // The first id whose cumulative mass reaches the target.
    const at::Tensor tokens = (cdf < target).sum(-1);
    // Rounding can push the target past the last kept id; fall back to the row's last kept id.
    const at::Tensor last_kept = (logp > kNegInf).to(at::kLong).cumsum(-1).argmax(-1);
    return at::where(tokens > last_kept, last_kept, tokens);
}

at::Tensor sample_rows(const at::Tensor& logp, std::vector<at::Generator>& gens) {
    TORCH_CHECK(logp.dim() == 2 && static_cast<int64_t>(gens.size()) == logp.size(0), "sample_rows: ", gens.size(),
                " generators for logp of shape ", logp.sizes());
    return sample_with_uniforms(logp.cpu(), draw_uniforms(gens));
}

at::Tensor token_logprobs(const at::Tensor& logits,
                          const at::Tensor& tokens,
                          const at::Tensor& kept,
                          double temperature) {
    TORCH_CHECK(logits.dim() == 2 && tokens.dim() == 1 && tokens.size(0) == logits.size(0),
                "token_logprobs: logits must be [N, V] and tokens [N]; got ", logits.sizes(), " and ", tokens.sizes());
    TORCH_CHECK(!kept.defined() || kept.sizes() == logits.sizes(), "token_logprobs: kept must be ", logits.sizes(),
                ", got ", kept.sizes());
    const double t = temperature > 0 ? temperature : 1.0;
    at::Tensor scaled = logits.to(at::kFloat) / t;
    if (kept.defined())
        scaled = at::where(kept.to(scaled.device()).to(at::kBool), scaled, at::full_like(scaled, kNegInf));
    const at::Tensor idx = tokens.to(scaled.device(), at::kLong).unsqueeze(1);
    return scaled.gather(1, idx).squeeze(1) - at::logsumexp(scaled, -1);
}

}  // namespace dsrl::rollout
