#include "trainer/dsa_stages.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "dsa/indexer_loss.h"
#include "trainer/rl_step.h"

namespace dsrl::trainer {
namespace {

std::vector<Param> select(const std::vector<Param>& params, bool indexer) {
    std::vector<Param> out;
    for (const Param& p : params) {
        if (is_indexer_param(p.name) == indexer) out.push_back(p);
    }
    return out;
}

// Turns requires_grad off for `params` while alive: autograd then records no graph for them and backward gives
// them no gradient, so AdamW (which skips parameters without a gradient) leaves them bit-identical.
class FreezeScope {
public:
    explicit FreezeScope(std::vector<Param> params) : params_(std::move(params)) {
        for (Param& p : params_) p.tensor.requires_grad_(false);
    }
    ~FreezeScope() {
        for (Param& p : params_) p.tensor.requires_grad_(true);
    }
    FreezeScope(const FreezeScope&) = delete;
    FreezeScope& operator=(const FreezeScope&) = delete;

private:
    std::vector<Param> params_;
};

dsa::ForwardInput input_of(const data::TokenBatch& b, const dsa::Model& model) {
    return {.input_ids = b.input_ids.to(model.device())};
}

void add_recall(const dsa::ForwardOutput& out, int64_t tile, std::map<std::string, double>* m) {
    at::NoGradGuard no_grad;
    double sum = 0;
    for (size_t i = 0; i < out.attention.size(); ++i) {
        const double r = dsa::attention_recall(out.attention[i], out.topk[i], out.query_pos, out.key_valid, tile);
        (*m)[absl::StrCat("recall/layer", i)] = r;
        sum += r;
    }
    (*m)["recall_mean"] = out.attention.empty() ? 0.0 : sum / static_cast<double>(out.attention.size());
}

// Averages, clips and steps `trained` (a subset of opt.params(); the rest have no gradient); then drops every
// gradient and restores lr scale 1 (a later stage must not inherit this stage's parameter groups).
void finish_step(
    AdamW& opt, const std::vector<Param>& trained, double lr, const JobConfig& job, std::map<std::string, double>* m) {
    // Only `trained` is stepped: any other gradient is dropped, and reduce_and_clip skips parameters without one.
    std::set<std::string> names;
    for (const Param& p : trained) names.insert(p.name);
    for (const Param& p : opt.params()) {
        if (names.count(p.name) == 0) p.tensor.mutable_grad() = at::Tensor();
    }
    const ClipResult c = opt.reduce_and_clip(job.trainer.optimizer.grad_clip);
    (*m)["grad_norm"] = c.norm;
    (*m)["lr"] = lr;
    (*m)["skipped_steps"] = c.finite ? 0 : 1;
    if (c.finite) opt.step(lr);
    opt.zero_grad(/*set_to_none=*/true);
    opt.set_lr_scales([](const std::string&) { return 1.0; });
}

}  // namespace

double dsa_lr_factor(const OptimizerConfig& c, int64_t step, int64_t total) {
    return c.lr > 0 ? lr_at(c, step, total) / c.lr : 1.0;
}

bool is_indexer_param(const std::string& name) { return name.find(".self_attn.indexer.") != std::string::npos; }

std::pair<at::Tensor, int64_t> masked_nll_sum(const at::Tensor& logits, const data::TokenBatch& batch) {
    const int64_t L = logits.size(1);
    const at::Tensor ids = batch.input_ids.to(logits.device());
    const at::Tensor mask = batch.loss_mask.to(logits.device()).narrow(1, 0, L - 1);
    const at::Tensor logp = at::log_softmax(logits.narrow(1, 0, L - 1).to(at::kFloat), -1);
    const at::Tensor nll = -at::gather(logp, -1, ids.narrow(1, 1, L - 1).unsqueeze(-1)).squeeze(-1);
    return {(nll * mask.to(nll.scalar_type())).sum(), mask.sum().item<int64_t>()};
}

std::map<std::string, double> indexer_warmup_step(dsa::Model& model,
                                                  AdamW& opt,
                                                  const data::TokenBatch& batch,
                                                  const JobConfig& job,
                                                  const dist::Communicator* comm,
                                                  double lr_factor,
                                                  dsa::MoeBalance* balance) {
    (void)balance;  // the warm-up trains the indexer only: no expert load, no balance loss
    opt.zero_grad(/*set_to_none=*/true);
    opt.set_lr_scales([](const std::string&) { return 1.0; });
    const std::vector<Param> indexer = select(opt.params(), true);
    std::map<std::string, double> m;
    {
        FreezeScope frozen(select(opt.params(), false));
        const dsa::ForwardOutput out = model.forward(input_of(batch, model), {.return_logits = false,
                                                                              .return_topk = true,
                                                                              .return_indexer = true,
                                                                              .return_attention = true,
                                                                              .detach_indexer_inputs = true,
                                                                              .path = dsa::AttentionPath::kDense});
        at::Tensor loss = at::zeros({}, at::TensorOptions().device(model.device()));
        for (size_t i = 0; i < out.indexer.size(); ++i) {
            loss = loss + dsa::indexer_warmup_loss(out.indexer[i], out.attention[i], out.query_pos, out.key_valid,
                                                   job.dsa.query_tile, model.config().impl)
                              .loss;
        }
        loss = loss / static_cast<double>(std::max<size_t>(1, out.indexer.size()));
        loss.backward();
        m["loss"] = loss.item<double>();
        add_recall(out, job.dsa.query_tile, &m);
    }
    finish_step(opt, indexer, lr_factor * job.dsa.indexer_lr, job, &m);
    return m;
}

std::map<std::string, double> sparse_train_step(dsa::Model& model,
                                                AdamW& opt,
                                                const data::TokenBatch& batch,
                                                const JobConfig& job,
                                                const dist::Communicator* comm,
                                                double lr_factor,
                                                dsa::MoeBalance* balance) {
    opt.zero_grad(/*set_to_none=*/true);
    const double lr = lr_factor * job.dsa.lr;
    const double indexer_scale = lr > 0 ? job.dsa.indexer_lr / lr : 0.0;
    opt.set_lr_scales([&](const std::string& name) { return is_indexer_param(name) ? indexer_scale : 1.0; });
    std::map<std::string, double> m;
    {
        const dsa::ForwardOutput out = model.forward(input_of(batch, model), {.return_topk = true,
                                                                              .return_indexer = true,
                                                                              .return_attention = true,
                                                                              .detach_indexer_inputs = true,
                                                                              .path = dsa::AttentionPath::kSparse,
                                                                              .balance = balance});
        const auto [nll_sum, count] = masked_nll_sum(out.logits, batch);
        const at::Tensor lm = nll_sum / static_cast<double>(std::max<int64_t>(1, count));
        at::Tensor l_i = at::zeros({}, at::TensorOptions().device(model.device()));
        for (size_t i = 0; i < out.indexer.size(); ++i) {
            l_i = l_i + dsa::indexer_sparse_loss(out.indexer[i], out.attention[i], out.topk[i], out.query_pos,
                                                 out.key_valid, job.dsa.query_tile)
                            .loss;
        }
        l_i = l_i / static_cast<double>(std::max<size_t>(1, out.indexer.size()));
        const at::Tensor loss = lm + l_i;
        (balance != nullptr ? balance->add_aux_loss(loss) : loss).backward();
        m["loss"] = loss.item<double>();
        m["lm_loss"] = lm.item<double>();
        m["indexer_loss"] = l_i.item<double>();
        add_recall(out, job.dsa.query_tile, &m);
    }
    m["indexer_lr"] = lr_factor * job.dsa.indexer_lr;
    finish_step(opt, opt.params(), lr, job, &m);
    return m;
}

std::map<std::string, double> dense_lm_step(dsa::Model& model,
                                            AdamW& opt,
                                            const data::TokenBatch& batch,
                                            const JobConfig& job,
                                            const dist::Communicator* comm,
                                            double lr_factor,
                                            dsa::MoeBalance* balance) {
    opt.zero_grad(/*set_to_none=*/true);
    opt.set_lr_scales([](const std::string&) { return 1.0; });
    std::map<std::string, double> m;
    {
        FreezeScope frozen(select(opt.params(), true));
        const dsa::ForwardOutput out =
            model.forward(input_of(batch, model), {.path = dsa::AttentionPath::kDense, .balance = balance});
        const auto [nll_sum, count] = masked_nll_sum(out.logits, batch);
        const at::Tensor loss = nll_sum / static_cast<double>(std::max<int64_t>(1, count));
        (balance != nullptr ? balance->add_aux_loss(loss) : loss).backward();
        m["loss"] = loss.item<double>();
    }
    finish_step(opt, select(opt.params(), false), lr_factor * job.dsa.dense_lm_lr, job, &m);
    return m;
}

std::map<std::string, double> dsa_evaluate(const dsa::Model& model,
                                           const std::vector<data::TokenBatch>& batches,
                                           const JobConfig& job,
                                           const dist::Communicator* comm) {
    at::NoGradGuard no_grad;
    const int64_t layers = model.config().num_hidden_layers;
    // [nll dense, nll sparse, target count, queries, recall·queries per layer, oracle recall·queries per layer]
    std::vector<double> sums(static_cast<size_t>(4 + 2 * layers), 0.0);
    const int64_t k = model.config().index_topk;
    for (const data::TokenBatch& b : batches) {
        const dsa::ForwardOutput dense = model.forward(
            input_of(b, model), {.return_topk = true, .return_attention = true, .path = dsa::AttentionPath::kDense});
        const auto [nll_d, count] = masked_nll_sum(dense.logits, b);
        const int64_t queries = b.input_ids.numel();
        sums[0] += nll_d.item<double>();
        sums[2] += static_cast<double>(count);
        sums[3] += static_cast<double>(queries);
        for (int64_t i = 0; i < layers; ++i) {
            sums[4 + i] +=
                static_cast<double>(queries) * dsa::attention_recall(dense.attention[i], dense.topk[i], dense.query_pos,
                                                                     dense.key_valid, job.dsa.query_tile);
            sums[4 + layers + i] +=
                static_cast<double>(queries) * dsa::attention_recall_oracle(dense.attention[i], k, dense.query_pos,
                                                                            dense.key_valid, job.dsa.query_tile);
        }
        const dsa::ForwardOutput sparse = model.forward(input_of(b, model), {.path = dsa::AttentionPath::kSparse});
        sums[1] += masked_nll_sum(sparse.logits, b).first.item<double>();
    }
    at::Tensor t = at::tensor(sums, at::kDouble);
    if (comm != nullptr && comm->size() > 1) comm->all_reduce(t, dist::ReduceOp::kSum);
    const double* s = t.data_ptr<double>();
    std::map<std::string, double> m;
    m["task_loss_dense"] = s[0] / std::max(1.0, s[2]);
    m["task_loss_sparse"] = s[1] / std::max(1.0, s[2]);
    double mean = 0, oracle = 0;
    for (int64_t i = 0; i < layers; ++i) {
        const double r = s[4 + i] / std::max(1.0, s[3]);
        const double o = s[4 + layers + i] / std::max(1.0, s[3]);
        m[absl::StrCat("recall/layer", i)] = r;
        m[absl::StrCat("recall_oracle/layer", i)] = o;
        mean += r / static_cast<double>(layers);
        oracle += o / static_cast<double>(layers);
    }
    m["recall_mean"] = mean;
    m["recall_oracle_mean"] = oracle;
    return m;
}

}  // namespace dsrl::trainer
