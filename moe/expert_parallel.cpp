#include "moe/expert_parallel.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <absl/strings/str_cat.h>

#include "core/dist/communicator.h"
#include "core/error.h"

namespace dsrl::moe {

int ExpertParallel::size() const { return group != nullptr ? group->size() : 1; }
int ExpertParallel::rank() const { return group != nullptr ? group->rank() : 0; }

void ExpertParallel::check() const {
    if (num_experts <= 0 || num_experts % size() != 0) {
        throw ConfigError(absl::StrCat("dist.expert_parallel_size = ", size(), " must divide model.n_routed_experts = ",
                                       num_experts, " (each rank holds n_routed_experts / expert_parallel_size)"));
    }
}

SwiGluWeights ExpertParallel::local(const SwiGluWeights& all) const {
    check();
    TORCH_CHECK(all.gate_proj.size(0) == num_experts, "ExpertParallel::local: expected ", num_experts,
                " stacked experts, got ", all.gate_proj.size(0));
    const int64_t n = local_experts(), first = first_expert();
    return {all.gate_proj.narrow(0, first, n), all.up_proj.narrow(0, first, n), all.down_proj.narrow(0, first, n)};
}

namespace {

std::vector<int64_t> to_vector(const at::Tensor& counts) {
    const at::Tensor c = counts.to(at::kCPU, at::kLong).contiguous();
    return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// The exchange as an autograd node: forward sends rows by `send`, backward sends the gradient rows back by the
// counts received.
class AllToAllV : public torch::autograd::Function<AllToAllV> {
public:
    static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                              const at::Tensor& x,
                              std::vector<int64_t> send,
                              const dist::Communicator* group,
                              std::vector<int64_t>* recv_out) {
        std::vector<int64_t> recv;
        at::Tensor y = group->all_to_all_v(x.contiguous(), send, &recv);
        if (recv_out != nullptr) *recv_out = recv;
        ctx->saved_data["send"] = send;
        ctx->saved_data["recv"] = recv;
        ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
        return y;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const auto* group = reinterpret_cast<const dist::Communicator*>(ctx->saved_data["group"].toInt());
        const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
        const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
        std::vector<int64_t> back;
        at::Tensor g = group->all_to_all_v(grads[0].contiguous(), recv, &back);
        TORCH_INTERNAL_ASSERT(back == send, "all_to_all_v backward: the returned rows do not match the sent ones");
        return {g, at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

}  // namespace

at::Tensor all_to_all_v(const at::Tensor& x,
                        const std::vector<int64_t>& send_counts,
                        std::vector<int64_t>* recv_counts,
                        const dist::Communicator& group) {
    return AllToAllV::apply(x, send_counts, &group, recv_counts);
}

at::Tensor routed_experts_ep(const at::Tensor& x,
                             const at::Tensor& indices,
                             const at::Tensor& weights,
                             const SwiGluWeights& local,
                             const ExpertParallel& ep) {
    if (ep.group == nullptr || ep.size() == 1) return routed_experts(x, indices, weights, local);
    ep.check();
    TORCH_CHECK(x.dim() == 2, "moe (expert parallel): x must be [T, H], got ", x.sizes());
    TORCH_CHECK(indices.sizes() == weights.sizes() && indices.dim() == 2 && indices.size(0) == x.size(0),
                "moe (expert parallel): indices and weights must both be [", x.size(0), ", k], got ", indices.sizes(),
                " and ", weights.sizes());
    const int64_t n_local = ep.local_experts();
    TORCH_CHECK(local.gate_proj.dim() == 3 && local.gate_proj.size(0) == n_local, "moe (expert parallel): expected ",
                n_local, " local experts, got ", local.gate_proj.sizes());
    const int P = ep.size();
    const dist::Communicator& group = *ep.group;

    // 1. Dispatch: (token, slot) pairs sorted by expert id, so each owner's pairs are contiguous and in expert order.
    const int64_t k = indices.size(1);
    const at::Tensor flat_ids = indices.reshape({-1}).to(at::kLong);
    const at::Tensor order = at::argsort(flat_ids, /*stable=*/true);
    const at::Tensor sorted_ids = flat_ids.index_select(0, order);
    const at::Tensor token_of = order.div(k, "floor");
    const at::Tensor weight_of = weights.reshape({-1}).index_select(0, order);
    const at::Tensor owner = sorted_ids.div(n_local, "floor");
    const std::vector<int64_t> send = to_vector(at::bincount(owner.cpu(), {}, P));
    std::vector<int64_t> recv;
    const at::Tensor x_recv = all_to_all_v(x.index_select(0, token_of), send, &recv, group);
    const at::Tensor ids_recv = group.all_to_all_v((sorted_ids - owner * n_local).contiguous(), send);

    // 2. The local experts, grouped: one SwiGLU per expert over the rows it received from every rank.
    at::Tensor out_recv;
    if (x_recv.size(0) == 0) {
        out_recv = x_recv * 0;  // no rows: still connected, so this rank's backward exchange runs too
    } else {
        const at::Tensor by_expert = at::argsort(ids_recv, /*stable=*/true);
        const std::vector<int64_t> count = to_vector(at::bincount(ids_recv.cpu(), {}, n_local));
        std::vector<at::Tensor> outs;
        int64_t start = 0;
        for (int64_t e = 0; e < n_local; ++e) {
            if (count[static_cast<size_t>(e)] == 0) continue;
            const at::Tensor rows = by_expert.narrow(0, start, count[static_cast<size_t>(e)]);
            outs.push_back(
                swiglu(x_recv.index_select(0, rows), local.gate_proj[e], local.up_proj[e], local.down_proj[e]));
            start += count[static_cast<size_t>(e)];
        }
        at::Tensor inverse = at::empty_like(by_expert);
        inverse.index_put_({by_expert}, at::arange(by_expert.size(0), by_expert.options()));
        out_recv = at::cat(outs).index_select(0, inverse);
    }

    // 3. Combine: the outputs go back to the ranks that sent the rows, in the order they were sent; weighted in
    // fp32 (the gate weights' dtype) and added per token in expert order, as routed_experts does.
    const at::Tensor out = all_to_all_v(out_recv, recv, nullptr, group);
    at::Tensor y = at::zeros_like(x);
    if (x.size(0) == 0) return y + out.sum() * 0;  // keep the exchange in the graph of a rank without tokens
    return y.index_add(0, token_of, (out * weight_of.unsqueeze(1)).to(y.scalar_type()));
}

}  // namespace dsrl::moe
