// The ATen reference of MLA attention (dsa/sparse_attention.h): the oracle of the CUDA kernels.
#include "dsa/sparse_attention.h"

#include "core/precision.h"

#include <torch/csrc/autograd/custom_function.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

namespace dsrl::dsa {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_qkv(const at::Tensor& q_lat, const at::Tensor& q_pe, const at::Tensor& c_kv, const at::Tensor& k_pe) {
    TORCH_CHECK(q_lat.dim() == 4 && q_pe.dim() == 4 && q_pe.sizes().slice(0, 3) == q_lat.sizes().slice(0, 3),
                "mla attention: q_lat must be [B, T, H, C] and q_pe [B, T, H, R] with equal B, T, H; got ",
                q_lat.sizes(), " and ", q_pe.sizes());
    TORCH_CHECK(c_kv.dim() == 3 && c_kv.size(0) == q_lat.size(0) && c_kv.size(2) == q_lat.size(3),
                "mla attention: c_kv must be [", q_lat.size(0), ", S, ", q_lat.size(3), "], got ", c_kv.sizes());
    TORCH_CHECK(
        k_pe.dim() == 3 && k_pe.size(0) == c_kv.size(0) && k_pe.size(1) == c_kv.size(1) && k_pe.size(2) == q_pe.size(3),
        "mla attention: k_pe must be [", c_kv.size(0), ", ", c_kv.size(1), ", ", q_pe.size(3), "], got ", k_pe.sizes());
}

// Softmax over the last dim of fp32 scores [.., K] with −inf for masked entries; rows with no finite entry
// give zero probabilities (not NaN) and lse = −inf.
std::pair<at::Tensor, at::Tensor> masked_softmax(const at::Tensor& scores) {
    const at::Tensor lse = at::logsumexp(scores, -1);
    const at::Tensor empty_row = lse.isneginf().unsqueeze(-1);
    const at::Tensor probs = at::where(empty_row, at::zeros_like(scores), at::softmax(scores, -1));
    return {probs, lse};
}

// The chunked functions' arithmetic: fp64 for fp64 inputs (exact gradient checks), else fp32.
at::ScalarType math_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Backward of one query chunk's softmax from its masked scores s (−inf = masked) and saved lse: P = exp(s − lse)
// (0 on masked entries and on rows without any, where lse = −inf too) and dS = scale · P ∘ (dP − δ), with
// dP = dO · Vᵀ and δ = Σ_c dO · O per row. Returns {P, dS}.
std::pair<at::Tensor, at::Tensor> softmax_backward(
    const at::Tensor& s, const at::Tensor& lse, const at::Tensor& dp, const at::Tensor& delta, double scale) {
    const at::Tensor probs = at::where(s.isfinite(), (s - lse.unsqueeze(-1)).exp(), at::zeros({}, s.options()));
    return {probs, (probs * (dp - delta.unsqueeze(-1))).mul_(scale)};
}

// The sparse reference as an autograd function over query chunks (see Note [Dense MLA in query chunks] below for
// the backward formulas, here over each query's gathered entries): forward keeps out and lse, backward
// re-gathers a chunk's entries, recomputes P = exp(s − lse) and scatter-adds the entries' gradients into
// dc_kv / dk_pe. Memory O(chunk · K · (C + R + H)), never the O(T · K · C) of every query's gathered entries
// that plain autograd would keep for backward.
class SparseMla : public torch::autograd::Function<SparseMla> {
public:
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                  const at::Tensor& q_lat,
                                                  const at::Tensor& q_pe,
                                                  const at::Tensor& c_kv,
                                                  const at::Tensor& k_pe,
                                                  const at::Tensor& indices,
                                                  double scale,
                                                  int64_t chunk) {
        const Fp32Region fp32;
        const at::ScalarType dt = math_dtype(q_lat);
        const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2);
        at::Tensor out = at::empty({B, T, H, c_kv.size(2)}, q_lat.options());
        at::Tensor lse = at::empty({B, T, H}, q_lat.options().dtype(dt));
        for (int64_t t0 = 0; t0 < T; t0 += chunk) {
            const int64_t n = std::min(chunk, T - t0);
            const Chunk c(q_lat, q_pe, c_kv, k_pe, indices, scale, t0, n, dt);
            auto [probs, l] = masked_softmax(c.s);
            out.narrow(1, t0, n).copy_(at::einsum("bthk,btkc->bthc", {probs, c.ckv}));
            lse.narrow(1, t0, n).copy_(l);
        }
        ctx->save_for_backward({q_lat, q_pe, c_kv, k_pe, indices, out, lse});
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["chunk"] = chunk;
        ctx->mark_non_differentiable({lse});
        return {out, lse};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const Fp32Region fp32;
        const auto v = ctx->get_saved_variables();
        const at::Tensor &q_lat = v[0], &q_pe = v[1], &c_kv = v[2], &k_pe = v[3], &indices = v[4], &out = v[5],
                         &lse = v[6];
        const double scale = ctx->saved_data["scale"].toDouble();
        const int64_t chunk = ctx->saved_data["chunk"].toInt();
        const at::ScalarType dt = lse.scalar_type();
        const int64_t B = q_lat.size(0), C = c_kv.size(2), R = k_pe.size(2);
        at::Tensor dq_lat = at::zeros(q_lat.sizes(), q_lat.options().dtype(dt));
        at::Tensor dq_pe = at::zeros(q_pe.sizes(), q_pe.options().dtype(dt));
        at::Tensor dkv = at::zeros(c_kv.sizes(), c_kv.options().dtype(dt));
        at::Tensor dpe = at::zeros(k_pe.sizes(), k_pe.options().dtype(dt));
        if (grads[0].defined()) {
            const at::Tensor d_out = grads[0].to(dt);
            const at::Tensor delta = (d_out * out.to(dt)).sum(-1);  // [B, T, H]
            for (int64_t t0 = 0; t0 < q_lat.size(1); t0 += chunk) {
                const int64_t n = std::min(chunk, q_lat.size(1) - t0);
                const Chunk c(q_lat, q_pe, c_kv, k_pe, indices, scale, t0, n, dt);
                const at::Tensor d_o = d_out.narrow(1, t0, n);
                const auto [probs, ds] =
                    softmax_backward(c.s, lse.narrow(1, t0, n), at::einsum("bthc,btkc->bthk", {d_o, c.ckv}),
                                     delta.narrow(1, t0, n), scale);
                dq_lat.narrow(1, t0, n).copy_(at::einsum("bthk,btkc->bthc", {ds, c.ckv}));
                dq_pe.narrow(1, t0, n).copy_(at::einsum("bthk,btkr->bthr", {ds, c.kpe}));
                const int64_t K = c.flat.size(1);
                const at::Tensor d_ckv = at::einsum("bthk,bthc->btkc", {ds, q_lat.narrow(1, t0, n).to(dt)}) +
                                         at::einsum("bthk,bthc->btkc", {probs, d_o});
                const at::Tensor d_kpe = at::einsum("bthk,bthr->btkr", {ds, q_pe.narrow(1, t0, n).to(dt)});
                // Invalid slots point at entry 0 with zero probability: they add zeros.
                dkv.scatter_add_(1, c.flat.unsqueeze(-1).expand({B, K, C}), d_ckv.reshape({B, K, C}));
                dpe.scatter_add_(1, c.flat.unsqueeze(-1).expand({B, K, R}), d_kpe.reshape({B, K, R}));
            }
        }
        return {dq_lat.to(q_lat.scalar_type()),
                dq_pe.to(q_pe.scalar_type()),
                dkv.to(c_kv.scalar_type()),
                dpe.to(k_pe.scalar_type()),
                at::Tensor(),
                at::Tensor(),
                at::Tensor()};
    }

private:
    // One chunk's gathered entries and masked scaled scores: ckv [B, n, K, C], kpe [B, n, K, R] (in dt),
    // s [B, n, H, K] (−inf on invalid slots), flat [B, n·K] the clamped entry indices.
    struct Chunk {
        at::Tensor ckv, kpe, s, flat;
        Chunk(const at::Tensor& q_lat,
              const at::Tensor& q_pe,
              const at::Tensor& c_kv,
              const at::Tensor& k_pe,
              const at::Tensor& indices,
              double scale,
              int64_t t0,
              int64_t n,
              at::ScalarType dt) {
            const int64_t B = q_lat.size(0), C = c_kv.size(2), R = k_pe.size(2);
            const at::Tensor idx = indices.narrow(1, t0, n);  // [B, n, K] int64, checked < S at the entry
            const int64_t K = idx.size(2);
            flat = idx.clamp_min(0).reshape({B, n * K});
            if (B == 1) {  // one sequence (the rollout's pool): rows by index, no index expanded over C
                ckv = c_kv.select(0, 0).index_select(0, flat.select(0, 0)).view({B, n, K, C}).to(dt);
                kpe = k_pe.select(0, 0).index_select(0, flat.select(0, 0)).view({B, n, K, R}).to(dt);
            } else {
                ckv = at::gather(c_kv, 1, flat.unsqueeze(-1).expand({B, n * K, C})).view({B, n, K, C}).to(dt);
                kpe = at::gather(k_pe, 1, flat.unsqueeze(-1).expand({B, n * K, R})).view({B, n, K, R}).to(dt);
            }
            s = (at::einsum("bthc,btkc->bthk", {q_lat.narrow(1, t0, n).to(dt), ckv}) +
                 at::einsum("bthr,btkr->bthk", {q_pe.narrow(1, t0, n).to(dt), kpe}))
                    .mul_(scale)
                    .masked_fill_(idx.lt(0).unsqueeze(2), kNegInf);
        }
    };
};

}  // namespace

void check_sparse_indices(const at::Tensor& indices, int64_t keys) {
    const int64_t max_index = indices.numel() ? indices.max().item<int64_t>() : 0;
    TORCH_CHECK(max_index < keys, "sparse attention: index ", max_index, " out of range for ", keys, " keys");
}

AttentionOutput sparse_mla_attention(const at::Tensor& q_lat,
                                     const at::Tensor& q_pe,
                                     const at::Tensor& c_kv,
                                     const at::Tensor& k_pe,
                                     const at::Tensor& indices,
                                     double scale,
                                     int64_t query_chunk,
                                     bool check_indices) {
    check_qkv(q_lat, q_pe, c_kv, k_pe);
    TORCH_CHECK(indices.dim() == 3 && indices.size(0) == q_lat.size(0) && indices.size(1) == q_lat.size(1),
                "sparse attention: indices must be [", q_lat.size(0), ", ", q_lat.size(1), ", K], got ",
                indices.sizes());
    TORCH_CHECK(query_chunk >= 1, "sparse attention: query_chunk must be >= 1, got ", query_chunk);
    // Once for the whole call (one host sync), not per chunk in forward and again in backward.
    if (check_indices) check_sparse_indices(indices, c_kv.size(1));
    const auto r = SparseMla::apply(q_lat, q_pe, c_kv, k_pe, indices.to(at::kLong), scale,
                                    std::max<int64_t>(1, std::min(query_chunk, q_lat.size(1))));
    return {r[0], r[1]};
}

namespace {

// Note [Dense MLA in query chunks]: the dense path is an autograd function that never holds more than one query
// chunk's scores [B, n, H, S]: forward keeps out and lse, backward recomputes each chunk's probabilities from lse
// (P = exp(s − lse)) and applies dS = P ∘ (dP − δ), δ = Σ_c dO · O, dP = dO · c_kvᵀ:
//   dq_lat = scale · dS · c_kv,  dq_pe = scale · dS · k_pe,
//   dc_kv  = scale · dSᵀ · q_lat + Pᵀ · dO   (c_kv is both key and value),  dk_pe = scale · dSᵀ · q_pe.
// Memory O(n · H · S) instead of the O(T · H · S) that plain autograd would keep. fp32 math (fp64 for fp64
// inputs), autocast off inside.
class DenseMla : public torch::autograd::Function<DenseMla> {
public:
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                  const at::Tensor& q_lat,
                                                  const at::Tensor& q_pe,
                                                  const at::Tensor& c_kv,
                                                  const at::Tensor& k_pe,
                                                  const at::Tensor& query_pos,
                                                  const at::Tensor& key_valid,
                                                  double scale,
                                                  int64_t chunk) {
        const Fp32Region fp32;
        const at::ScalarType dt = math_dtype(q_lat);
        const at::Tensor kv = c_kv.to(dt), pe = k_pe.to(dt);
        const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2);
        at::Tensor out = at::empty({B, T, H, c_kv.size(2)}, q_lat.options());
        at::Tensor lse = at::empty({B, T, H}, q_lat.options().dtype(dt == at::kDouble ? at::kDouble : at::kFloat));
        for (int64_t t0 = 0; t0 < T; t0 += chunk) {
            const int64_t n = std::min(chunk, T - t0);
            const at::Tensor s = scores(q_lat, q_pe, kv, pe, query_pos, key_valid, scale, t0, n, dt);
            auto [probs, l] = masked_softmax(s);
            out.narrow(1, t0, n).copy_(at::einsum("bths,bsc->bthc", {probs, kv}));
            lse.narrow(1, t0, n).copy_(l);
        }
        ctx->save_for_backward({q_lat, q_pe, c_kv, k_pe, query_pos, key_valid, out, lse});
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["chunk"] = chunk;
        ctx->mark_non_differentiable({lse});
        return {out, lse};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const Fp32Region fp32;
        const auto v = ctx->get_saved_variables();
        const at::Tensor &q_lat = v[0], &q_pe = v[1], &c_kv = v[2], &k_pe = v[3], &query_pos = v[4], &key_valid = v[5],
                         &out = v[6], &lse = v[7];
        const double scale = ctx->saved_data["scale"].toDouble();
        const int64_t chunk = ctx->saved_data["chunk"].toInt();
        const at::ScalarType dt = math_dtype(q_lat);
        const at::Tensor kv = c_kv.to(dt), pe = k_pe.to(dt);
        at::Tensor dq_lat = at::zeros(q_lat.sizes(), q_lat.options().dtype(dt));
        at::Tensor dq_pe = at::zeros(q_pe.sizes(), q_pe.options().dtype(dt));
        at::Tensor dkv = at::zeros(kv.sizes(), kv.options());
        at::Tensor dpe = at::zeros(pe.sizes(), pe.options());
        if (grads[0].defined()) {
            const at::Tensor d_out = grads[0].to(dt);
            const at::Tensor delta = (d_out * out.to(dt)).sum(-1);  // [B, T, H]
            for (int64_t t0 = 0; t0 < q_lat.size(1); t0 += chunk) {
                const int64_t n = std::min(chunk, q_lat.size(1) - t0);
                const at::Tensor s = scores(q_lat, q_pe, kv, pe, query_pos, key_valid, scale, t0, n, dt);
                const at::Tensor d_o = d_out.narrow(1, t0, n);
                const auto [probs, ds] =
                    softmax_backward(s, lse.narrow(1, t0, n).to(dt), at::einsum("bthc,bsc->bths", {d_o, kv}),
                                     delta.narrow(1, t0, n), scale);
                const at::Tensor q1 = q_lat.narrow(1, t0, n).to(dt), q2 = q_pe.narrow(1, t0, n).to(dt);
                dq_lat.narrow(1, t0, n).copy_(at::einsum("bths,bsc->bthc", {ds, kv}));
                dq_pe.narrow(1, t0, n).copy_(at::einsum("bths,bsr->bthr", {ds, pe}));
                dkv += at::einsum("bths,bthc->bsc", {ds, q1}) + at::einsum("bths,bthc->bsc", {probs, d_o});
                dpe += at::einsum("bths,bthr->bsr", {ds, q2});
            }
        }
        return {dq_lat.to(q_lat.scalar_type()),
                dq_pe.to(q_pe.scalar_type()),
                dkv.to(c_kv.scalar_type()),
                dpe.to(k_pe.scalar_type()),
                at::Tensor(),
                at::Tensor(),
                at::Tensor(),
                at::Tensor()};
    }

private:
    // Masked scaled scores of queries [t0, t0 + n) over every key: [B, n, H, S] in dt, −inf where invisible.
    static at::Tensor scores(const at::Tensor& q_lat,
                             const at::Tensor& q_pe,
                             const at::Tensor& kv,
                             const at::Tensor& pe,
                             const at::Tensor& query_pos,
                             const at::Tensor& key_valid,
                             double scale,
                             int64_t t0,
                             int64_t n,
                             at::ScalarType dt) {
        const int64_t num_keys = kv.size(1);
        at::Tensor s = (at::einsum("bthc,bsc->bths", {q_lat.narrow(1, t0, n).to(dt), kv}) +
                        at::einsum("bthr,bsr->bths", {q_pe.narrow(1, t0, n).to(dt), pe}))
                           .mul_(scale);
        at::Tensor visible = at::arange(num_keys, query_pos.options()).view({1, 1, num_keys}) <=
                             query_pos.narrow(1, t0, n).unsqueeze(-1);
        if (key_valid.defined()) visible = visible.logical_and(key_valid.to(at::kBool).unsqueeze(1));
        return s.masked_fill_(visible.unsqueeze(2).logical_not(), kNegInf);
    }
};

}  // namespace

AttentionOutput dense_mla_attention(const at::Tensor& q_lat,
                                    const at::Tensor& q_pe,
                                    const at::Tensor& c_kv,
                                    const at::Tensor& k_pe,
                                    const at::Tensor& query_pos,
                                    const at::Tensor& key_valid,
                                    double scale,
                                    int64_t query_chunk) {
    check_qkv(q_lat, q_pe, c_kv, k_pe);
    TORCH_CHECK(query_pos.dim() == 2 && query_pos.size(0) == q_lat.size(0) && query_pos.size(1) == q_lat.size(1),
                "dense attention: query_pos must be [", q_lat.size(0), ", ", q_lat.size(1), "], got ",
                query_pos.sizes());
    TORCH_CHECK(query_chunk >= 0, "dense attention: query_chunk must be >= 0, got ", query_chunk);
    const int64_t B = q_lat.size(0), T = q_lat.size(1), H = q_lat.size(2), S = c_kv.size(1);
    if (query_chunk == 0) {  // about 2^27 scores per chunk (512 MiB in fp32)
        query_chunk = std::max<int64_t>(1, (int64_t(1) << 27) / std::max<int64_t>(1, B * H * S));
    }
    query_chunk = std::max<int64_t>(1, std::min(query_chunk, T));
    const auto r = DenseMla::apply(q_lat, q_pe, c_kv, k_pe, query_pos.to(at::kLong),
                                   key_valid.defined() ? key_valid.to(at::kBool) : at::Tensor(), scale, query_chunk);
    return {r[0], r[1]};
}

}  // namespace dsrl::dsa
