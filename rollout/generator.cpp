#include "rollout/generator.h"

#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "core/logging.h"
#include "core/rng.h"
#include "rollout/engine.h"

namespace dsrl::rollout {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Per-sequence state while a batch decodes.
struct Row {
    const GenerationRequest* req = nullptr;
    Sample sample;
    at::Generator gen;
    std::vector<std::vector<at::Tensor>> routes;  // [moe layer] -> pieces [n, k]
    std::vector<std::vector<at::Tensor>> topk;    // [layer] -> pieces [n, index_topk], keys within the sample
    int64_t pad = 0;                              // left padding: cache slot of the sample's first token
    bool finished = false;
};

bool ends_with_stop(const text::Tokenizer& tok,
                    const std::vector<int32_t>& response,
                    const std::vector<std::string>& stop) {
    if (stop.empty()) return false;
    size_t longest_stop = 0;
    for (const std::string& s : stop) longest_stop = std::max(longest_stop, s.size());
    // Decode a tail long enough for any stop string (a token is at least one byte).
    const size_t n = std::min(response.size(), longest_stop + 8);
    const std::vector<int64_t> tail(response.end() - static_cast<std::ptrdiff_t>(n), response.end());
    const std::string text = tok.decode(tail);
    for (const std::string& s : stop) {
        if (!s.empty() && text.size() >= s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0)
            return true;
    }
    return false;
}

void generate_batch(const dsa::Model& model,
                    const text::Tokenizer& tok,
                    std::vector<Row>& rows,
                    const GenerateOptions& opt,
                    GenerationStats& stats) {
    const ModelConfig& cfg = model.config();
    const int64_t batch = static_cast<int64_t>(rows.size());
    int64_t padded = 0;
    for (const Row& r : rows) padded = std::max<int64_t>(padded, static_cast<int64_t>(r.req->prompt.size()));
    const int64_t max_new = std::max<int64_t>(
        0, std::min(opt.max_new_tokens, cfg.max_position_embeddings - 1));  // at least one prompt token fits

    // Left-padded prompts, one prefill.
    at::Tensor ids = at::full({batch, padded}, tok.pad_id(), at::kLong);
    at::Tensor mask = at::zeros({batch, padded}, at::kLong);
    for (int64_t b = 0; b < batch; ++b) {
        const auto& p = rows[b].req->prompt;
        const int64_t len = static_cast<int64_t>(p.size());
        for (int64_t t = 0; t < len; ++t) ids[b][padded - len + t] = static_cast<int64_t>(p[t]);
        mask[b].narrow(0, padded - len, len).fill_(1);
    }
    const c10::Device device = model.device();
    dsa::KvCache cache = model.new_cache(batch, padded + std::max<int64_t>(max_new, 1));
    const dsa::ForwardOptions fopt{.return_routes = opt.record_routes, .return_topk = opt.record_indexer};
    // Selected cache slots -> key positions within the sample (−1 stays −1).
    auto own_keys = [](const at::Tensor& slots, int64_t pad) {
        return at::where(slots >= 0, slots - pad, at::full({}, -1, slots.options())).to(at::kCPU, at::kInt);
    };
    auto t0 = Clock::now();
    // Expert parallelism: each forward is joined by the group's ranks that have none of their own.
    const dsa::ForwardLockstep lock(model);
    lock.step();
    dsa::ForwardOutput out = model.forward({ids.to(device), mask.to(device)}, fopt, &cache);
    stats.prefill_seconds += seconds_since(t0);
    const int64_t num_moe = static_cast<int64_t>(out.routes.size());
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = static_cast<int64_t>(rows[b].req->prompt.size());
        rows[b].routes.resize(num_moe);
        for (int64_t j = 0; j < num_moe; ++j)
            rows[b].routes[j].push_back(out.routes[j][b].narrow(0, padded - len, len).cpu());
        rows[b].pad = padded - len;
        rows[b].topk.resize(out.topk.size());
        for (size_t j = 0; j < out.topk.size(); ++j)
            rows[b].topk[j].push_back(own_keys(out.topk[j][b].narrow(0, padded - len, len), rows[b].pad));
    }
    at::Tensor last_logits = out.logits.select(1, padded - 1);  // [A, V]

    std::vector<int64_t> active(batch);
    for (int64_t b = 0; b < batch; ++b) active[b] = b;
    t0 = Clock::now();
    while (!active.empty() && max_new > 0) {
        // 1. Sample the next token of every active row from its own generator.
        const at::Tensor logp = processed_logprobs(last_logits, opt.sampling).cpu();
        std::vector<at::Generator> gens;
        for (const int64_t b : active) gens.push_back(rows[b].gen);
        const at::Tensor tokens = sample_rows(logp, gens);
        at::Tensor next = at::empty({static_cast<int64_t>(active.size()), 1}, at::kLong);
        for (size_t i = 0; i < active.size(); ++i) {
            Row& row = rows[active[i]];
            Sample& s = row.sample;
            const std::vector<int32_t>& forced = row.req->forced;
            const size_t t_index = s.response.size();
            const int64_t token =
                t_index < forced.size() ? forced[t_index] : tokens[static_cast<int64_t>(i)].item<int64_t>();
            next[static_cast<int64_t>(i)][0] = token;
            s.response.push_back(static_cast<int32_t>(token));
            s.logprobs.push_back(logp[static_cast<int64_t>(i)][token].item<float>());
            if (opt.record_kept) s.kept.push_back(KeptSet::from_mask(logp[static_cast<int64_t>(i)].isfinite()));
            if (!finish_sample(s, token, tok, *row.req, opt, cfg.max_position_embeddings)) continue;
            row.finished = true;
        }
        // 2. Feed the sampled tokens: the next logits for running rows, the last routes for finished ones.
        lock.step();
        out = model.forward({next.to(device)}, fopt, &cache);
        ++stats.decode_steps;
        stats.decode_row_steps += static_cast<int64_t>(active.size());
        for (size_t i = 0; i < active.size(); ++i) {
            Row& row = rows[active[i]];
            for (int64_t j = 0; j < num_moe; ++j) row.routes[j].push_back(out.routes[j][static_cast<int64_t>(i)].cpu());
            for (size_t j = 0; j < out.topk.size(); ++j)
                row.topk[j].push_back(own_keys(out.topk[j][static_cast<int64_t>(i)], row.pad));
        }
        // 3. Finished rows leave the batch.
        std::vector<int64_t> keep_pos, still;
        for (size_t i = 0; i < active.size(); ++i) {
            if (!rows[active[i]].finished) {
                keep_pos.push_back(static_cast<int64_t>(i));
                still.push_back(active[i]);
            }
        }
        if (still.size() != active.size() && !still.empty()) {
            const at::Tensor idx = at::tensor(keep_pos, at::kLong);
            cache.select_rows(idx);
            last_logits = out.logits.select(1, 0).index_select(0, idx.to(device));
        } else {
            last_logits = out.logits.select(1, 0);
        }
        active = std::move(still);
    }
    stats.decode_seconds += seconds_since(t0);
    for (Row& row : rows) {
        Sample& s = row.sample;
        if (max_new == 0) s.finish = FinishReason::kContext;
        if (opt.record_routes) {
            std::vector<at::Tensor> per_layer;
            for (auto& pieces : row.routes) per_layer.push_back(at::cat(pieces, 0));
            s.set_routes(per_layer, cfg.n_routed_experts);
        }
        if (opt.record_indexer) {
            std::vector<at::Tensor> per_layer;
            for (auto& pieces : row.topk) per_layer.push_back(at::cat(pieces, 0));
            s.set_indexer(per_layer, cfg.index_topk);
        }
        stats.generated_tokens += static_cast<int64_t>(s.response.size());
    }
}

}  // namespace

uint64_t sample_seed(uint64_t base_seed, int64_t prompt_id, int32_t sample_index) {
    return rng::mix64(rng::derive_seed(base_seed, prompt_id, "rollout-sample") ^
                      rng::mix64(static_cast<uint64_t>(sample_index) + 1));
}

Sample start_sample(const GenerationRequest& r, const GenerateOptions& opt, const ModelConfig& cfg) {
    Sample s;
    s.domain = r.domain;
    s.prompt_id = r.prompt_id;
    s.sample_index = r.sample_index;
    s.seed = r.seed;
    s.policy_version = opt.policy_version;
    s.prompt = r.prompt;
    s.vocab_size = cfg.vocab_size;
    return s;
}

bool finish_sample(Sample& s,
                   int64_t token,
                   const text::Tokenizer& tok,
                   const GenerationRequest& req,
                   const GenerateOptions& opt,
                   int64_t max_position_embeddings) {
    const int64_t generated = static_cast<int64_t>(s.response.size());
    const int64_t max_new = std::min(opt.max_new_tokens, max_position_embeddings - 1);
    if (token == tok.eos_id()) {
        s.finish = FinishReason::kEos;
    } else if (ends_with_stop(tok, s.response, opt.stop)) {
        s.finish = FinishReason::kStop;
    } else if (generated >= opt.max_new_tokens ||
               (!req.forced.empty() && static_cast<size_t>(generated) >= req.forced.size())) {
        s.finish = FinishReason::kLength;
    } else if (static_cast<int64_t>(s.prompt.size()) + generated >= max_position_embeddings || generated >= max_new) {
        s.finish = FinishReason::kContext;
    } else {
        return false;
    }
    return true;
}

void check_requests(const ModelConfig& cfg,
                    const std::vector<GenerationRequest>& requests,
                    const GenerateOptions& opt) {
    TORCH_CHECK(opt.max_batch_size >= 1, "generate: max_batch_size must be >= 1, got ", opt.max_batch_size);
    TORCH_CHECK(opt.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got ", opt.max_new_tokens);
    for (const GenerationRequest& r : requests) {
        for (const int32_t id : r.prompt) {
            if (id < 0 || id >= cfg.vocab_size) {
                throw DataError(absl::StrCat("rollout: prompt ", r.prompt_id, " (domain '", r.domain, "'): token id ",
                                             id, " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
            }
        }
        if (r.prompt.empty()) {
            throw DataError(absl::StrCat("rollout: prompt ", r.prompt_id, " (domain '", r.domain, "') is empty"));
        }
        for (const int32_t id : r.forced) {
            if (id < 0 || id >= cfg.vocab_size) {
                throw DataError(absl::StrCat("rollout: prompt ", r.prompt_id, ": forced token id ", id,
                                             " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
            }
        }
        if (static_cast<int64_t>(r.prompt.size()) >= cfg.max_position_embeddings) {
            throw DataError(absl::StrCat("rollout: prompt ", r.prompt_id, " (domain '", r.domain, "') has ",
                                         r.prompt.size(), " tokens; the model's context is ",
                                         cfg.max_position_embeddings));
        }
    }
}

std::vector<Sample> generate(const dsa::Model& model,
                             const text::Tokenizer& tokenizer,
                             const std::vector<GenerationRequest>& requests,
                             const GenerateOptions& opt,
                             GenerationStats* stats) {
    TORCH_CHECK(opt.engine.kind == "continuous" || opt.engine.kind == "static", "generate: unknown engine '",
                opt.engine.kind, "' (continuous or static)");
    // Under autocast every forward would cast each fp32 matmul weight again (a decode step per token): cast them once.
    const c10::DeviceType type = model.device().type();
    std::optional<dsa::Model> cast;
    if (opt.engine.cast_weights_once && at::autocast::is_autocast_enabled(type) && !requests.empty() &&
        model.weights().lm_head.scalar_type() != at::autocast::get_autocast_dtype(type)) {
        cast.emplace(model.autocast_weights(at::autocast::get_autocast_dtype(type)));
    }
    const dsa::Model& m = cast ? *cast : model;
    if (opt.engine.kind == "static") return generate_static(m, tokenizer, requests, opt, stats);
    // The continuous engine on CUDA: the projections that read one input stacked into one GEMM each (three kernels
    // fewer per layer and decode step), with the query's per-head product absorbed where that costs few bytes,
    // copies made once for the call.
    if (opt.engine.fuse_projections && m.device().is_cuda() && !requests.empty()) {
        const dsa::Model fused = m.fuse_projections(opt.engine.absorb_projections);
        return generate_continuous(fused, tokenizer, requests, opt, stats);
    }
    return generate_continuous(m, tokenizer, requests, opt, stats);
}

std::vector<Sample> generate_static(const dsa::Model& model,
                                    const text::Tokenizer& tokenizer,
                                    const std::vector<GenerationRequest>& requests,
                                    const GenerateOptions& opt,
                                    GenerationStats* stats_out) {
    const ModelConfig& cfg = model.config();
    check_requests(cfg, requests, opt);
    at::NoGradGuard no_grad;
    GenerationStats stats;
    std::vector<Sample> out;
    out.reserve(requests.size());
    const auto t0 = Clock::now();
    double last_log = 0;
    for (size_t start = 0; start < requests.size(); start += static_cast<size_t>(opt.max_batch_size)) {
        const size_t end = std::min(requests.size(), start + static_cast<size_t>(opt.max_batch_size));
        std::vector<Row> rows(end - start);
        for (size_t i = start; i < end; ++i) {
            const GenerationRequest& r = requests[i];
            Row& row = rows[i - start];
            row.req = &r;
            row.gen = rng::make_cpu_generator(r.seed);
            row.sample = start_sample(r, opt, cfg);
            stats.prompt_tokens += static_cast<int64_t>(r.prompt.size());
        }
        generate_batch(model, tokenizer, rows, opt, stats);
        stats.sequences += static_cast<int64_t>(rows.size());
        for (Row& row : rows) out.push_back(std::move(row.sample));
        // Progress on long rollouts: at most one line per 10 s, and the last batch.
        const double secs = seconds_since(t0);
        if (requests.size() > static_cast<size_t>(opt.max_batch_size) &&
            (secs - last_log >= 10.0 || end == requests.size())) {
            last_log = secs;
            DSRL_LOG(info) << absl::StrFormat("rollout: %d/%d sequences, %d tokens generated, %.0f tok/s", end,
                                              requests.size(), stats.generated_tokens,
                                              stats.generated_tokens / std::max(secs, 1e-9));
        }
    }
    // Expert parallelism: until every rank of the group has decoded all its sequences, join their forwards.
    dsa::ForwardLockstep(model).finish();
    if (stats_out != nullptr) *stats_out += stats;
    return out;
}

std::vector<SampleGroup> generate_groups(const dsa::Model& model,
                                         const text::Tokenizer& tokenizer,
                                         const std::vector<Prompt>& prompts,
                                         int64_t group_size,
                                         const GenerateOptions& opt,
                                         uint64_t base_seed,
                                         GenerationStats* stats) {
    TORCH_CHECK(group_size >= 1, "generate_groups: group_size must be >= 1, got ", group_size);
    std::vector<GenerationRequest> requests;
    for (const Prompt& p : prompts) {
        for (int32_t g = 0; g < group_size; ++g) {
            requests.push_back({p.domain, p.prompt_id, g, sample_seed(base_seed, p.prompt_id, g), p.tokens});
        }
    }
    std::vector<Sample> samples = generate(model, tokenizer, requests, opt, stats);
    std::vector<SampleGroup> groups;
    size_t k = 0;
    for (const Prompt& p : prompts) {
        SampleGroup g{p.domain, p.prompt_id, {}};
        for (int64_t i = 0; i < group_size; ++i) g.samples.push_back(std::move(samples[k++]));
        groups.push_back(std::move(g));
    }
    return groups;
}

std::function<at::Tensor(int64_t)> indexer_replay(const ModelConfig& cfg,
                                                  std::vector<const Sample*> samples,
                                                  int64_t len) {
    const int64_t k = cfg.index_topk;
    for (const Sample* s : samples) {
        if (s->indexer.empty()) {
            throw DataError(absl::StrCat("keep-indexer: sample ", s->sample_index, " of prompt ", s->prompt_id,
                                         " has no recorded indexer sets (rollout.record_indexer was off)"));
        }
        if (static_cast<int64_t>(s->indexer.size()) != cfg.num_hidden_layers || s->indexer_topk != k) {
            throw DataError(absl::StrCat("keep-indexer: sample ", s->sample_index, " of prompt ", s->prompt_id,
                                         " holds sets of ", s->indexer.size(), " layers at k ", s->indexer_topk,
                                         "; the model has ", cfg.num_hidden_layers, " layers at index_topk ", k));
        }
        TORCH_CHECK(s->num_tokens() <= len, "indexer_replay: a sample of ", s->num_tokens(), " tokens in rows of ",
                    len);
    }
    return [samples = std::move(samples), len, k](int64_t layer) {
        at::Tensor out = at::full({static_cast<int64_t>(samples.size()), len, k}, -1, at::kInt);
        out.select(2, 0).fill_(0);  // padding positions: key 0 only (their outputs are never used)
        for (size_t i = 0; i < samples.size(); ++i) {
            const Sample& s = *samples[i];
            out[static_cast<int64_t>(i)]
                .narrow(0, 0, s.num_tokens())
                .copy_(s.indexer_sets(static_cast<int32_t>(layer)));
        }
        return out;
    };
}

at::Tensor recompute_logprobs(const dsa::Model& model,
                              const Sample& sample,
                              double temperature,
                              bool replay_routes,
                              bool apply_kept,
                              bool replay_indexer) {
    const int64_t np = static_cast<int64_t>(sample.prompt.size());
    const int64_t nr = static_cast<int64_t>(sample.response.size());
    TORCH_CHECK(np >= 1, "recompute_logprobs: empty prompt");
    if (nr == 0) return at::zeros({0}, at::kFloat);
    std::vector<int64_t> ids(sample.prompt.begin(), sample.prompt.end());
    ids.insert(ids.end(), sample.response.begin(), sample.response.end());
    const c10::Device device = model.device();
    const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).to(device);
    std::vector<at::Tensor> routes;
    dsa::ForwardOptions fopt;
    if (replay_routes) {
        TORCH_CHECK(sample.num_moe_layers > 0 || sample.routes.empty(), "recompute_logprobs: the sample has no routes");
        for (int32_t j = 0; j < sample.num_moe_layers; ++j) routes.push_back(sample.route_tensor(j).unsqueeze(0));
        fopt.replay_routes = &routes;
    }
    if (replay_indexer) fopt.replay_topk = indexer_replay(model.config(), {&sample}, sample.num_tokens());
    const at::Tensor logits = model.forward({input}, fopt).logits[0].narrow(0, np - 1, nr);  // predicts the response
    at::Tensor kept;
    if (apply_kept) {
        TORCH_CHECK(static_cast<int64_t>(sample.kept.size()) == nr, "recompute_logprobs: ", sample.kept.size(),
                    " kept sets for ", nr, " response tokens");
        kept = at::zeros({nr, logits.size(1)}, at::kBool);
        for (int64_t t = 0; t < nr; ++t) sample.kept[t].fill_mask(kept[t]);
    }
    const at::Tensor tokens =
        at::tensor(std::vector<int64_t>(sample.response.begin(), sample.response.end()), at::kLong);
    return token_logprobs(logits, tokens, kept, temperature).cpu();
}

}  // namespace dsrl::rollout
