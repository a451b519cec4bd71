#include "grpo/logprobs.h"

#include <torch/csrc/autograd/custom_function.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>

#include <limits>

#include "core/error.h"
#include "rollout/generator.h"

namespace dsrl::grpo {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Kept masks travel as bits: [M, ceil(V/8)] uint8, bit j of byte c = id 8c + j. 1/32 of an fp32 mask.
at::Tensor pack_bits(const at::Tensor& mask) {
    const int64_t vocab = mask.size(1);
    const int64_t pad = (8 - vocab % 8) % 8;
    const at::Tensor m = at::constant_pad_nd(mask.to(at::kByte), {0, pad}).view({mask.size(0), -1, 8});
    const at::Tensor weights =
        at::tensor(std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 128}, at::kLong).to(mask.device());
    return (m.to(at::kLong) * weights).sum(-1).to(at::kByte);
}

at::Tensor unpack_bits(const at::Tensor& bits, int64_t vocab) {
    const at::Tensor shifts = at::arange(8, bits.options().dtype(at::kByte));
    return bits.unsqueeze(-1)
        .bitwise_right_shift(shifts)
        .bitwise_and(1)
        .view({bits.size(0), -1})
        .narrow(1, 0, vocab)
        .to(at::kBool);
}

// Tempered logits of a chunk, −inf outside the kept set.
at::Tensor chunk_logits(const at::Tensor& h,
                        const at::Tensor& weight,
                        const at::Tensor& bits,
                        int64_t start,
                        int64_t len,
                        double temperature) {
    // In the hidden states' dtype (bf16 under autocast, where backward may run without it), fp32 out.
    at::Tensor logits =
        at::matmul(h.narrow(0, start, len), weight.t().to(h.scalar_type())).to(at::kFloat) / temperature;
    if (bits.defined()) {
        logits =
            at::where(unpack_bits(bits.narrow(0, start, len), weight.size(0)), logits, at::full_like(logits, kNegInf));
    }
    return logits;
}

class ChunkedLogprob : public torch::autograd::Function<ChunkedLogprob> {
public:
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                  const at::Tensor& hidden,
                                                  const at::Tensor& weight,
                                                  const at::Tensor& tokens,
                                                  const at::Tensor& bits,
                                                  bool has_kept,
                                                  double temperature,
                                                  int64_t chunk,
                                                  bool entropy) {
        const int64_t m = hidden.size(0);
        at::Tensor logp = at::empty({m}, hidden.options().dtype(at::kFloat));
        at::Tensor ent = entropy ? at::empty({m}, logp.options()) : at::empty({0}, logp.options());
        for (int64_t s = 0; s < m; s += chunk) {
            const int64_t len = std::min(chunk, m - s);
            const at::Tensor logits = chunk_logits(hidden, weight, has_kept ? bits : at::Tensor(), s, len, temperature);
            const at::Tensor lse = at::logsumexp(logits, -1);
            logp.narrow(0, s, len).copy_(logits.gather(1, tokens.narrow(0, s, len).unsqueeze(1)).squeeze(1) - lse);
            if (entropy) {
                const at::Tensor p = at::softmax(logits, -1);
                const at::Tensor plogp = at::where(p.gt(0), p * (logits - lse.unsqueeze(1)), at::zeros_like(p));
                ent.narrow(0, s, len).copy_(-plogp.sum(-1));
            }
        }
        ctx->save_for_backward({hidden, weight, tokens, bits});
        ctx->saved_data["temperature"] = temperature;
        ctx->saved_data["chunk"] = chunk;
        ctx->saved_data["has_kept"] = has_kept;
        ctx->mark_non_differentiable({ent});
        return {logp, ent};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const at::Tensor& hidden = saved[0];
        const at::Tensor& weight = saved[1];
        const at::Tensor& tokens = saved[2];
        const at::Tensor& bits = saved[3];
        const double temperature = ctx->saved_data["temperature"].toDouble();
        const int64_t chunk = ctx->saved_data["chunk"].toInt();
        const at::Tensor kept_bits = ctx->saved_data["has_kept"].toBool() ? bits : at::Tensor();
        const at::Tensor& g = grads[0];
        at::Tensor grad_hidden = at::zeros_like(hidden);
        at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
        if (g.defined()) {
            for (int64_t s = 0; s < hidden.size(0); s += chunk) {
                const int64_t len = std::min(chunk, hidden.size(0) - s);
                // d logp / d logits = onehot(token) − softmax (zero outside the kept set), over T.
                at::Tensor dlogits = -at::softmax(chunk_logits(hidden, weight, kept_bits, s, len, temperature), -1);
                const at::Tensor idx = tokens.narrow(0, s, len).unsqueeze(1);
                dlogits.scatter_add_(1, idx, at::ones_like(idx, dlogits.options()));
                dlogits = dlogits * (g.narrow(0, s, len).to(at::kFloat).unsqueeze(1) / temperature);
                grad_hidden.narrow(0, s, len).copy_(
                    at::matmul(dlogits.to(hidden.scalar_type()), weight.to(hidden.scalar_type())));
                grad_weight += at::matmul(dlogits.t(), hidden.narrow(0, s, len).to(at::kFloat));
            }
        }
        return {grad_hidden,  grad_weight.to(weight.scalar_type()),
                at::Tensor(), at::Tensor(),
                at::Tensor(), at::Tensor(),
                at::Tensor(), at::Tensor()};
    }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> chunked_token_logprobs(const at::Tensor& hidden,
                                                         const at::Tensor& weight,
                                                         const at::Tensor& tokens,
                                                         const KeptChunkFn& kept,
                                                         double temperature,
                                                         int64_t chunk_tokens,
                                                         bool entropy) {
    TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
                "chunked_token_logprobs: ", "hidden must be [M, H] and weight [V, H]; got ", hidden.sizes(), " and ",
                weight.sizes());
    TORCH_CHECK(tokens.dim() == 1 && tokens.size(0) == hidden.size(0), "chunked_token_logprobs: tokens must be [",
                hidden.size(0), "], got ", tokens.sizes());
    TORCH_CHECK(chunk_tokens >= 1, "chunked_token_logprobs: chunk_tokens must be >= 1, got ", chunk_tokens);
    const int64_t m = hidden.size(0);
    // Autograd functions need defined tensor inputs: "no kept sets" is an empty bit tensor plus a flag.
    at::Tensor bits = at::empty({0}, hidden.options().dtype(at::kByte));
    if (kept) {
        std::vector<at::Tensor> parts;
        for (int64_t s = 0; s < m; s += chunk_tokens) {
            const int64_t len = std::min(chunk_tokens, m - s);
            const at::Tensor mask = kept(s, len);
            TORCH_CHECK(mask.dim() == 2 && mask.size(0) == len && mask.size(1) == weight.size(0),
                        "chunked_token_logprobs: kept chunk must be [", len, ", ", weight.size(0), "], got ",
                        mask.sizes());
            parts.push_back(pack_bits(mask.to(hidden.device())));
        }
        bits = parts.empty() ? at::empty({0, (weight.size(0) + 7) / 8}, hidden.options().dtype(at::kByte))
                             : at::cat(parts, 0);
    }
    const double t = temperature > 0 ? temperature : 1.0;
    auto out = ChunkedLogprob::apply(hidden, weight, tokens.to(hidden.device(), at::kLong), bits,
                                     static_cast<bool>(kept), t, chunk_tokens, entropy);
    return {out[0], entropy ? out[1] : at::Tensor()};
}

PackedBatch pack_samples(const std::vector<const rollout::Sample*>& samples, int64_t pad_id) {
    PackedBatch b;
    b.samples = samples;
    const int64_t n = static_cast<int64_t>(samples.size());
    int64_t max_len = 1, max_resp = 1;
    for (const rollout::Sample* s : samples) {
        if (s->prompt.empty()) {
            throw DataError(
                absl::StrCat("grpo: sample ", s->sample_index, " of prompt ", s->prompt_id, " has an empty prompt"));
        }
        max_len = std::max(max_len, s->num_tokens());
        max_resp = std::max<int64_t>(max_resp, static_cast<int64_t>(s->response.size()));
        b.vocab = std::max(b.vocab, s->vocab_size);
    }
    b.input_ids = at::full({n, max_len}, pad_id, at::kLong);
    b.attention_mask = at::zeros({n, max_len}, at::kLong);
    b.targets = at::zeros({n, max_resp}, at::kLong);
    b.valid = at::zeros({n, max_resp}, at::kFloat);
    b.logp_old = at::zeros({n, max_resp}, at::kFloat);
    b.predict_pos = at::zeros({n, max_resp}, at::kLong);
    b.kept.resize(n);
    const int32_t moe_layers = n > 0 ? samples[0]->num_moe_layers : 0;
    const int32_t top_k = n > 0 ? samples[0]->route_top_k : 0;
    for (int32_t j = 0; j < moe_layers; ++j) b.routes.push_back(at::zeros({n, max_len, top_k}, at::kLong));
    for (int64_t i = 0; i < n; ++i) {
        const rollout::Sample& s = *samples[i];
        const int64_t np = static_cast<int64_t>(s.prompt.size()), nr = static_cast<int64_t>(s.response.size());
        std::vector<int64_t> ids(s.prompt.begin(), s.prompt.end());
        ids.insert(ids.end(), s.response.begin(), s.response.end());
        b.input_ids[i].narrow(0, 0, np + nr).copy_(at::tensor(ids, at::kLong));
        b.attention_mask[i].narrow(0, 0, np + nr).fill_(1);
        if (nr > 0) {
            b.targets[i].narrow(0, 0, nr).copy_(
                at::tensor(std::vector<int64_t>(s.response.begin(), s.response.end()), at::kLong));
            if (s.loss_mask.empty()) {
                b.valid[i].narrow(0, 0, nr).fill_(1);
            } else {  // multi-turn: environment tokens carry no loss
                if (static_cast<int64_t>(s.loss_mask.size()) != nr) {
                    throw DataError(absl::StrCat("grpo: sample ", s.sample_index, " of prompt ", s.prompt_id, " has ",
                                                 s.loss_mask.size(), " loss-mask entries for ", nr,
                                                 " response tokens"));
                }
                std::vector<float> m(s.loss_mask.begin(), s.loss_mask.end());
                b.valid[i].narrow(0, 0, nr).copy_(at::tensor(m, at::kFloat));
            }
            if (!s.logprobs.empty()) b.logp_old[i].narrow(0, 0, nr).copy_(at::tensor(s.logprobs, at::kFloat));
            b.predict_pos[i].narrow(0, 0, nr).copy_(at::arange(np - 1, np + nr - 1, at::kLong));
        }
        if (s.num_moe_layers == moe_layers && s.route_top_k == top_k && !s.routes.empty()) {
            for (int32_t j = 0; j < moe_layers; ++j) b.routes[j][i].narrow(0, 0, np + nr).copy_(s.route_tensor(j));
        } else if (!s.routes.empty() || moe_layers > 0) {
            b.routes.clear();  // inconsistent routing records: replay is refused in sequence_logprobs
        }
        for (const rollout::KeptSet& k : s.kept) b.kept[i].push_back(&k);
    }
    return b;
}

LogprobResult sequence_logprobs(const dsa::Model& model, const PackedBatch& batch, const LogprobOptions& opt) {
    const ModelConfig& cfg = model.config();
    const int64_t n = batch.input_ids.size(0);
    const c10::Device device = model.device();
    dsa::ForwardOptions fopt{.return_logits = false, .return_hidden = true, .balance = opt.balance};
    std::vector<at::Tensor> routes;
    if (opt.replay_routes) {
        if (static_cast<int64_t>(batch.routes.size()) !=
            cfg.num_hidden_layers - std::min(cfg.first_k_dense_replace, cfg.num_hidden_layers)) {
            throw DataError(absl::StrCat("grpo: keep_routing needs the routing path of every sample (",
                                         batch.routes.size(), " recorded MoE layers, the model has ",
                                         cfg.num_hidden_layers - cfg.first_k_dense_replace, ")"));
        }
        for (const at::Tensor& r : batch.routes) routes.push_back(r.to(device));
        fopt.replay_routes = &routes;
    }
    if (opt.replay_indexer) fopt.replay_topk = rollout::indexer_replay(cfg, batch.samples, batch.input_ids.size(1));
    if (opt.apply_kept) {
        for (int64_t i = 0; i < n; ++i) {
            const int64_t nr = static_cast<int64_t>(batch.samples[i]->response.size());
            if (static_cast<int64_t>(batch.kept[i].size()) != nr) {
                throw DataError(absl::StrCat("grpo: keep_sampling_mask needs a kept set per response token; sample ", i,
                                             " has ", batch.kept[i].size(), " for ", nr, " tokens"));
            }
            for (int64_t t = 0; t < nr; ++t) {
                if (batch.samples[i]->trained(static_cast<size_t>(t)) && batch.kept[i][t]->size() == 0) {
                    throw DataError(absl::StrCat("grpo: sample ", i, " token ", t, " has an empty kept set"));
                }
            }
        }
    }
    const dsa::ForwardOutput out = model.forward({batch.input_ids.to(device), batch.attention_mask.to(device)}, fopt);
    // The hidden state of every valid (sample, token) prediction, flattened.
    const at::Tensor valid_b = batch.valid.gt(0);
    const at::Tensor flat_valid = valid_b.reshape({-1}).nonzero().squeeze(1);  // indices into [N*T]
    const int64_t len = batch.input_ids.size(1);
    const at::Tensor rows = (at::arange(n, at::kLong).unsqueeze(1) * len + batch.predict_pos).reshape({-1});
    const at::Tensor hidden =
        out.hidden.reshape({n * len, -1}).index_select(0, rows.index_select(0, flat_valid).to(device));
    const at::Tensor tokens = batch.targets.reshape({-1}).index_select(0, flat_valid);
    // (sample, token) of each flattened entry, for the kept sets: the valid positions in row-major order, as
    // flat_valid lists them.
    std::vector<std::pair<int64_t, int64_t>> where;
    const int64_t T = batch.targets.size(1);
    {
        const at::Tensor fv = flat_valid.cpu();
        const int64_t* p = fv.data_ptr<int64_t>();
        for (int64_t j = 0; j < fv.numel(); ++j) where.emplace_back(p[j] / T, p[j] % T);
    }
    KeptChunkFn kept;
    if (opt.apply_kept) {
        const int64_t vocab = cfg.vocab_size;
        kept = [&, vocab](int64_t start, int64_t count) {
            at::Tensor mask = at::zeros({count, vocab}, at::kBool);
            for (int64_t j = 0; j < count; ++j) {
                const auto [i, t] = where[start + j];
                batch.kept[i][t]->fill_mask(mask[j]);
            }
            return mask;
        };
    }
    auto [flat_logp, flat_ent] = chunked_token_logprobs(hidden, model.weights().lm_head, tokens, kept, opt.temperature,
                                                        opt.chunk_tokens, opt.entropy);
    LogprobResult r;
    const at::Tensor idx = flat_valid.to(device);
    r.logp = at::zeros({n * T}, flat_logp.options()).index_copy(0, idx, flat_logp).view({n, T});
    if (opt.entropy) r.entropy = at::zeros({n * T}, flat_ent.options()).index_copy(0, idx, flat_ent).view({n, T});
    return r;
}

}  // namespace dsrl::grpo
