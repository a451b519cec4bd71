#include "dsa/indexer_loss.h"

#include "core/precision.h"
#include "dsa/indexer_cuda.h"
#include "dsa/indexer_topk.h"

#include <torch/csrc/autograd/custom_function.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/log.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace dsrl::dsa {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// fp32, or fp64 when any input is fp64 (exact gradient checks).
at::ScalarType compute_dtype(std::initializer_list<at::Tensor> ts) {
    at::ScalarType t = at::kFloat;
    for (const at::Tensor& x : ts) {
        if (x.defined() && x.scalar_type() == at::kDouble) t = at::kDouble;
    }
    return t;
}

void check_inputs(const char* fn,
                  const IndexerOutput& ix,
                  const AttentionInputs& a,
                  const at::Tensor& query_pos,
                  const at::Tensor& key_valid,
                  int64_t query_tile) {
    TORCH_CHECK(a.q_lat.dim() == 4 && a.q_pe.dim() == 4 && a.q_pe.sizes().slice(0, 3) == a.q_lat.sizes().slice(0, 3),
                fn, ": attention q_lat must be [B, L, H, C] and q_pe [B, L, H, R] with equal B, L, H; got ",
                a.q_lat.sizes(), " and ", a.q_pe.sizes());
    const int64_t B = a.q_lat.size(0), L = a.q_lat.size(1), H = a.q_lat.size(2);
    TORCH_CHECK(a.c_kv.dim() == 3 && a.c_kv.size(0) == B && a.c_kv.size(2) == a.q_lat.size(3), fn,
                ": attention c_kv must be [", B, ", S, ", a.q_lat.size(3), "], got ", a.c_kv.sizes());
    const int64_t S = a.c_kv.size(1);
    TORCH_CHECK(a.k_pe.dim() == 3 && a.k_pe.size(0) == B && a.k_pe.size(1) == S && a.k_pe.size(2) == a.q_pe.size(3), fn,
                ": attention k_pe must be [", B, ", ", S, ", ", a.q_pe.size(3), "], got ", a.k_pe.sizes());
    TORCH_CHECK(a.scale > 0, fn, ": attention scale must be > 0, got ", a.scale);
    TORCH_CHECK(ix.q.dim() == 4 && ix.q.size(0) == B && ix.q.size(1) == L, fn, ": indexer q must be [", B, ", ", L,
                ", H_I, D_I], got ", ix.q.sizes());
    TORCH_CHECK(ix.k.dim() == 3 && ix.k.size(0) == B && ix.k.size(1) == S && ix.k.size(2) == ix.q.size(3), fn,
                ": indexer k must be [", B, ", ", S, ", ", ix.q.size(3), "], got ", ix.k.sizes());
    TORCH_CHECK(ix.w.dim() == 3 && ix.w.size(0) == B && ix.w.size(1) == L && ix.w.size(2) == ix.q.size(2), fn,
                ": indexer w must be [", B, ", ", L, ", ", ix.q.size(2), "], got ", ix.w.sizes());
    TORCH_CHECK(query_pos.dim() == 2 && query_pos.size(0) == B && query_pos.size(1) == L, fn, ": query_pos must be [",
                B, ", ", L, "], got ", query_pos.sizes());
    TORCH_CHECK(!key_valid.defined() || (key_valid.dim() == 2 && key_valid.size(0) == B && key_valid.size(1) == S), fn,
                ": key_valid must be [", B, ", ", S, "], got ", key_valid.sizes());
    TORCH_CHECK(query_tile >= 1, fn, ": query_tile must be >= 1, got ", query_tile);
    (void)H;
}

void check_topk(const char* fn, const at::Tensor& topk, int64_t B, int64_t L) {
    TORCH_CHECK(topk.dim() == 3 && topk.size(0) == B && topk.size(1) == L, fn, ": topk must be [", B, ", ", L,
                ", K], got ", topk.sizes());
    TORCH_CHECK(!c10::isFloatingType(topk.scalar_type()), fn, ": topk must be an integer tensor, got ",
                topk.scalar_type());
}

at::Tensor key_valid_or_ones(const at::Tensor& key_valid, int64_t B, int64_t S, const at::Tensor& like) {
    return key_valid.defined() ? key_valid.to(like.device(), at::kBool)
                               : at::ones({B, S}, like.options().dtype(at::kBool));
}

// [B, L] bool: the query is a real token (its own key position is valid).
at::Tensor real_queries(const at::Tensor& query_pos, const at::Tensor& key_valid) {
    const int64_t S = key_valid.size(1);
    const at::Tensor in_range = query_pos.ge(0).logical_and(query_pos.lt(S));
    return key_valid.gather(1, query_pos.clamp(0, std::max<int64_t>(S - 1, 0))).logical_and(in_range);
}

// [B, n, S] bool: key s is visible to query t of the tile.
at::Tensor visible_tile(const at::Tensor& query_pos_t, const at::Tensor& key_valid) {
    const int64_t S = key_valid.size(1);
    const at::Tensor keys = at::arange(S, query_pos_t.options()).view({1, 1, S});
    return keys.le(query_pos_t.unsqueeze(-1)).logical_and(key_valid.unsqueeze(1));
}

// Main-attention scores of a query tile over every key: [B, n, H, S] (× scale), in kcat's dtype.
at::Tensor dense_scores(
    const at::Tensor& q_lat, const at::Tensor& q_pe, const at::Tensor& kcat, int64_t t0, int64_t n, double scale) {
    const at::Tensor q = at::cat({q_lat.narrow(1, t0, n), q_pe.narrow(1, t0, n)}, -1).to(kcat.scalar_type());
    return at::einsum("bthe,bse->bths", {q, kcat}).mul_(scale);
}

// Dense target of a tile: head average of exp(score − lse) on visible keys, [B, n, S].
at::Tensor dense_target(const at::Tensor& q_lat,
                        const at::Tensor& q_pe,
                        const at::Tensor& kcat,
                        const at::Tensor& lse,
                        const at::Tensor& visible,
                        int64_t t0,
                        int64_t n,
                        double scale) {
    at::Tensor probs = dense_scores(q_lat, q_pe, kcat, t0, n, scale);
    at::Tensor l;
    if (lse.numel() > 0) {
        l = lse.narrow(1, t0, n).to(kcat.scalar_type());
    } else {  // the forward's lse is not usable (reduced precision): this tile's own, from the same scores
        l = at::logsumexp(probs.masked_fill(visible.unsqueeze(2).logical_not(), kNegInf), -1);
    }
    l = at::where(l.isfinite(), l, at::zeros_like(l));  // a query without keys has no visible entry anyway
    probs.sub_(l.unsqueeze(-1)).exp_().masked_fill_(visible.unsqueeze(2).logical_not(), 0);
    return probs.mean(2);
}

// The selected entries of a tile: clamped indices [B, n, K] and the validity mask.
struct Selection {
    at::Tensor idx;  // [B, n, K] int64, −1 replaced by 0
    at::Tensor sel;  // [B, n, K] bool
};

Selection tile_selection(const at::Tensor& topk, int64_t t0, int64_t n, int64_t num_keys) {
    const at::Tensor idx = topk.narrow(1, t0, n).to(at::kLong);
    TORCH_CHECK(idx.numel() == 0 || idx.max().item<int64_t>() < num_keys, "indexer loss: top-k index ",
                idx.numel() ? idx.max().item<int64_t>() : 0, " out of range for ", num_keys, " keys");
    return {idx.clamp_min(0), idx.ge(0)};
}

// x [B, S, E] gathered at idx [B, n, K] -> [B, n, K, E].
at::Tensor gather_keys(const at::Tensor& x, const at::Tensor& idx) {
    const int64_t B = idx.size(0), n = idx.size(1), K = idx.size(2), E = x.size(2);
    return at::gather(x, 1, idx.reshape({B, n * K, 1}).expand({B, n * K, E})).view({B, n, K, E});
}

// Sparse target of a tile: per-head softmax over the selected set, head-averaged, [B, n, K].
at::Tensor sparse_target(const at::Tensor& q_lat,
                         const at::Tensor& q_pe,
                         const at::Tensor& kcat,
                         const Selection& s,
                         int64_t t0,
                         int64_t n,
                         double scale) {
    const at::Tensor q = at::cat({q_lat.narrow(1, t0, n), q_pe.narrow(1, t0, n)}, -1).to(kcat.scalar_type());
    at::Tensor scores = at::einsum("bthe,btke->bthk", {q, gather_keys(kcat, s.idx)}).mul_(scale);
    const at::Tensor sel = s.sel.unsqueeze(2);
    scores.masked_fill_(sel.logical_not(), kNegInf);
    const at::Tensor lse = at::logsumexp(scores, -1, /*keepdim=*/true);
    // A query without a selected key gets p = 0 (its −inf − −inf is NaN, replaced here).
    return at::where(sel, (scores - lse).exp(), at::zeros_like(scores)).mean(2);
}

// Per-head indexer pre-activations of a tile (× d_I^-1/2): [B, n, H_I, S] against every key (keys [B, S, D]) or
// [B, n, H_I, K] against gathered keys ([B, n, K, D]).
at::Tensor indexer_heads(const at::Tensor& q_t, const at::Tensor& keys, double iscale) {
    return (keys.dim() == 3 ? at::einsum("btjd,bsd->btjs", {q_t, keys}) : at::einsum("btjd,btkd->btjk", {q_t, keys}))
        .mul_(iscale);
}

// log softmax of the indexer logits over `mask` (−inf outside; NaN rows without a masked-in entry).
at::Tensor indexer_log_probs(const at::Tensor& a, const at::Tensor& w_t, const at::Tensor& mask) {
    const at::Tensor logits = at::einsum("btjs,btj->bts", {at::relu(a), w_t}).masked_fill(mask.logical_not(), kNegInf);
    return logits - at::logsumexp(logits, -1, /*keepdim=*/true);
}

// One query tile's indexer side: its log-probs over the tile's mask and what backward needs. The kernels
// (dense warm-up; dsa/indexer_cuda.h) fuse the ReLU head sum, so only the ATen path has per-head pre-activations.
struct IndexerTile {
    at::Tensor q_t, w_t, pos_t;  // the tile's q (bf16 for the kernels, else the math dtype), w, query positions
    at::Tensor a;                // ATen path: d_I^-1/2 · q·k per head, [B, n, H_I, S|K]
    at::Tensor logq;             // [B, n, S|K] in the math dtype (−inf outside the mask)
};

// Note [Indexer KL recompute]: one autograd function serves both losses. Forward loops over query tiles,
// building the tile's target p and the indexer's log-probs, and keeps only the scalar; backward rebuilds each
// tile and applies dL/dI_t = row_weight_t · (softmax(I_t) − p_t), then, with a = d_I^-1/2 · q·k and
// I = Σ_j w_j ReLU(a_j): dw_j = Σ_s G_s ReLU(a_js), da_js = G_s w_j [a_js > 0], dq_j = d_I^-1/2 Σ_s da_js k_s,
// dk_s = d_I^-1/2 Σ_{t,j} da_js q_j. Nothing of size [L, S] is ever alive.
class IndexerKl : public torch::autograd::Function<IndexerKl> {
public:
    // q, k, w: the indexer (differentiable). q_lat, q_pe: attention queries; kcat [B, S, C+R] attention keys in
    // the compute dtype; lse [B, L, H] (dense) or empty; topk [B, L, K] (sparse) or empty; key_valid [B, S] bool;
    // row_weight [B, L] (1/n for valid queries, else 0).
    static variable_list forward(AutogradContext* ctx,
                                 const at::Tensor& q,
                                 const at::Tensor& k,
                                 const at::Tensor& w,
                                 const at::Tensor& q_lat,
                                 const at::Tensor& q_pe,
                                 const at::Tensor& kcat,
                                 const at::Tensor& lse,
                                 const at::Tensor& topk,
                                 const at::Tensor& query_pos,
                                 const at::Tensor& key_valid,
                                 const at::Tensor& row_weight,
                                 bool sparse,
                                 bool kernels,
                                 double scale,
                                 int64_t tile) {
        const Fp32Region fp32;  // the losses are fp32/fp64 math even inside a bf16 autocast region
        const at::ScalarType dt = kcat.scalar_type();
        const double iscale = 1.0 / std::sqrt(double(q.size(3)));
        const at::Tensor kf = k.to(kernels ? at::kBFloat16 : dt);
        at::Tensor loss = at::zeros({}, kcat.options());
        for (int64_t t0 = 0; t0 < q.size(1); t0 += tile) {
            const int64_t n = std::min(tile, q.size(1) - t0);
            const Tile tl = make_tile(q_lat, q_pe, kcat, lse, topk, query_pos, key_valid, kf, sparse, scale, t0, n);
            const at::Tensor logq =
                indexer_tile(q, w, kf, query_pos, key_valid, tl.mask, tl.keys, kernels, iscale, dt, t0, n).logq;
            const at::Tensor pos = tl.p.gt(0);
            // p · (log p − log q) where p > 0 (0 · log 0 = 0; masked-out keys have p = 0 and log q = −inf).
            const at::Tensor kl = at::where(pos, tl.p * (at::log(tl.p) - logq), at::zeros_like(tl.p)).sum(-1);
            const at::Tensor rw = row_weight.narrow(1, t0, n);
            loss += at::where(rw.ne(0), kl * rw, at::zeros_like(kl)).sum();
        }
        ctx->save_for_backward({q, k, w, q_lat, q_pe, kcat, lse, topk, query_pos, key_valid, row_weight});
        ctx->saved_data["sparse"] = sparse;
        ctx->saved_data["kernels"] = kernels;
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["tile"] = tile;
        return {loss};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const Fp32Region fp32;  // backward threads inherit the forward's autocast state
        const auto v = ctx->get_saved_variables();
        const at::Tensor &q = v[0], &k = v[1], &w = v[2], &q_lat = v[3], &q_pe = v[4], &kcat = v[5], &lse = v[6],
                         &topk = v[7], &query_pos = v[8], &key_valid = v[9], &row_weight = v[10];
        const bool sparse = ctx->saved_data["sparse"].toBool();
        const bool kernels = ctx->saved_data["kernels"].toBool();
        const double scale = ctx->saved_data["scale"].toDouble();
        const int64_t tile = ctx->saved_data["tile"].toInt();
        const at::ScalarType dt = kcat.scalar_type();
        const double iscale = 1.0 / std::sqrt(double(q.size(3)));
        const int64_t B = q.size(0), S = k.size(1), D = q.size(3);
        at::Tensor dq = at::zeros(q.sizes(), q.options().dtype(dt));
        at::Tensor dk = at::zeros(k.sizes(), k.options().dtype(dt));
        at::Tensor dw = at::zeros(w.sizes(), w.options().dtype(dt));
        const at::Tensor& g = grads[0];
        if (g.defined()) {
            const at::Tensor kf = k.to(kernels ? at::kBFloat16 : dt);
            const at::Tensor gs = g.to(dt);
            for (int64_t t0 = 0; t0 < q.size(1); t0 += tile) {
                const int64_t n = std::min(tile, q.size(1) - t0);
                const Tile tl = make_tile(q_lat, q_pe, kcat, lse, topk, query_pos, key_valid, kf, sparse, scale, t0, n);
                const IndexerTile it =
                    indexer_tile(q, w, kf, query_pos, key_valid, tl.mask, tl.keys, kernels, iscale, dt, t0, n);
                const at::Tensor soft = at::where(tl.mask, it.logq.exp(), at::zeros_like(it.logq));
                const at::Tensor rw = (row_weight.narrow(1, t0, n) * gs).unsqueeze(-1);
                // Rows of weight 0 (padding) may hold NaN (no key at all): they contribute nothing.
                const at::Tensor G = at::where(rw.ne(0), (soft - tl.p) * rw, at::zeros_like(soft));  // [B, n, S|K]
                if (kernels) {  // the same G through the fused logits' backward kernel: no [B, n, H_I, S] tensor
                    const cuda::IndexerGrads gr = cuda::indexer_logits_backward(it.q_t, kf, it.w_t, iscale, it.pos_t,
                                                                                key_valid, G.to(at::kFloat));
                    dq.narrow(1, t0, n).copy_(gr.dq);
                    dk += gr.dk;
                    dw.narrow(1, t0, n).copy_(gr.dw);
                    continue;
                }
                const at::Tensor &q_t = it.q_t, &w_t = it.w_t, &a = it.a;
                dw.narrow(1, t0, n).copy_(at::einsum("bts,btjs->btj", {G, at::relu(a)}));
                const at::Tensor da = (G.unsqueeze(2) * w_t.unsqueeze(-1)).mul_(a.gt(0));  // [B, n, H_I, S|K]
                if (!sparse) {
                    dq.narrow(1, t0, n).copy_(at::einsum("btjs,bsd->btjd", {da, tl.keys}).mul_(iscale));
                    dk += at::einsum("btjs,btjd->bsd", {da, q_t}).mul_(iscale);
                } else {
                    dq.narrow(1, t0, n).copy_(at::einsum("btjk,btkd->btjd", {da, tl.keys}).mul_(iscale));
                    const at::Tensor dkeys = at::einsum("btjk,btjd->btkd", {da, q_t}).mul_(iscale);  // [B, n, K, D]
                    const int64_t K = dkeys.size(2);
                    dk.scatter_add_(1, tl.idx.reshape({B, n * K, 1}).expand({B, n * K, D}),
                                    dkeys.reshape({B, n * K, D}));
                }
            }
        }
        (void)S;
        return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dw.to(w.scalar_type()), at::Tensor(), at::Tensor(),
                at::Tensor(),           at::Tensor(),           at::Tensor(),           at::Tensor(), at::Tensor(),
                at::Tensor(),           at::Tensor(),           at::Tensor(),           at::Tensor(), at::Tensor()};
    }

private:
    // kf: k in bf16 (kernels) or the math dtype dt.
    static IndexerTile indexer_tile(const at::Tensor& q,
                                    const at::Tensor& w,
                                    const at::Tensor& kf,
                                    const at::Tensor& query_pos,
                                    const at::Tensor& key_valid,
                                    const at::Tensor& mask,
                                    const at::Tensor& keys,
                                    bool kernels,
                                    double iscale,
                                    at::ScalarType dt,
                                    int64_t t0,
                                    int64_t n) {
        IndexerTile it;
        if (kernels) {
            it.q_t = q.narrow(1, t0, n).to(at::kBFloat16).contiguous();
            it.w_t = w.narrow(1, t0, n).contiguous();
            it.pos_t = query_pos.narrow(1, t0, n).contiguous();
            const at::Tensor logits = cuda::indexer_logits(it.q_t, kf, it.w_t, iscale, it.pos_t, key_valid);
            it.logq = (logits - at::logsumexp(logits, -1, /*keepdim=*/true)).to(dt);
        } else {
            it.q_t = q.narrow(1, t0, n).to(dt);
            it.w_t = w.narrow(1, t0, n).to(dt);
            it.a = indexer_heads(it.q_t, keys, iscale);
            it.logq = indexer_log_probs(it.a, it.w_t, mask);
        }
        return it;
    }

    struct Tile {
        at::Tensor p;     // [B, n, S|K] target (0 outside mask)
        at::Tensor mask;  // [B, n, S|K] bool: visible keys (dense) or selected slots (sparse)
        at::Tensor keys;  // indexer keys: [B, S, D] (dense) or gathered [B, n, K, D] (sparse)
        at::Tensor idx;   // sparse: clamped indices [B, n, K]
    };

    static Tile make_tile(const at::Tensor& q_lat,
                          const at::Tensor& q_pe,
                          const at::Tensor& kcat,
                          const at::Tensor& lse,
                          const at::Tensor& topk,
                          const at::Tensor& query_pos,
                          const at::Tensor& key_valid,
                          const at::Tensor& k,
                          bool sparse,
                          double scale,
                          int64_t t0,
                          int64_t n) {
        Tile tl;
        if (!sparse) {
            tl.mask = visible_tile(query_pos.narrow(1, t0, n), key_valid);
            tl.p = dense_target(q_lat, q_pe, kcat, lse, tl.mask, t0, n, scale);
            tl.keys = k;
        } else {
            const Selection s = tile_selection(topk, t0, n, kcat.size(1));
            tl.mask = s.sel;
            tl.p = sparse_target(q_lat, q_pe, kcat, s, t0, n, scale);
            tl.keys = gather_keys(k, s.idx);
            tl.idx = s.idx;
        }
        return tl;
    }
};

struct Prepared {
    at::Tensor kcat, key_valid, valid;
    at::ScalarType dt;
};

Prepared prepare(const IndexerOutput& ix,
                 const AttentionInputs& a,
                 const at::Tensor& query_pos,
                 const at::Tensor& key_valid) {
    Prepared p;
    p.dt = compute_dtype({ix.q, ix.k, ix.w, a.q_lat, a.q_pe, a.c_kv, a.k_pe});
    p.kcat = at::cat({a.c_kv.detach(), a.k_pe.detach()}, -1).to(p.dt);
    p.key_valid = key_valid_or_ones(key_valid, a.c_kv.size(0), a.c_kv.size(1), a.c_kv);
    p.valid = real_queries(query_pos.to(a.c_kv.device(), at::kLong), p.key_valid);
    return p;
}

IndexerLoss run_kl(const IndexerOutput& ix,
                   const AttentionInputs& a,
                   const at::Tensor& topk,
                   const at::Tensor& query_pos,
                   const Prepared& p,
                   bool sparse,
                   bool kernels,
                   int64_t query_tile) {
    at::Tensor valid = p.valid;
    if (sparse) valid = valid.logical_and(topk.ge(0).any(-1));
    IndexerLoss r;
    r.num_queries = valid.sum().item<int64_t>();
    const at::Tensor row_weight = valid.to(p.dt) / double(std::max<int64_t>(r.num_queries, 1));
    // The forward's per-head lse normalizes our recomputed scores only when the forward computed them in full
    // precision; under bf16 autocast (q_lat bf16) each tile's lse is recomputed from the fp32 scores instead.
    const bool forward_lse =
        !sparse && at::isFloatingType(a.q_lat.scalar_type()) && c10::elementSize(a.q_lat.scalar_type()) >= 4;
    const at::Tensor lse = forward_lse ? a.lse.detach() : at::empty({0}, p.kcat.options());
    const at::Tensor idx = sparse ? topk.to(at::kLong) : at::empty({0}, p.kcat.options().dtype(at::kLong));
    r.loss = IndexerKl::apply(ix.q, ix.k, ix.w, a.q_lat.detach(), a.q_pe.detach(), p.kcat, lse, idx,
                              query_pos.to(p.kcat.device(), at::kLong), p.key_valid, row_weight, sparse, kernels,
                              a.scale, query_tile)[0];
    return r;
}

}  // namespace

IndexerLoss indexer_warmup_loss(const IndexerOutput& indexer,
                                const AttentionInputs& attention,
                                const at::Tensor& query_pos,
                                const at::Tensor& key_valid,
                                int64_t query_tile,
                                Impl impl) {
    check_inputs("indexer_warmup_loss", indexer, attention, query_pos, key_valid, query_tile);
    const bool kernels = use_kernels(impl, indexer_kernels_fit(indexer.q, indexer.k, indexer.w), "indexer_warmup_loss",
                                     [&] { return indexer_kernels_mismatch(indexer.q, indexer.k, indexer.w); });
    TORCH_CHECK(attention.dense,
                "indexer_warmup_loss: attention.lse must be over all visible keys (a forward with "
                "AttentionPath::kDense), got the lse of the sparse path; use indexer_sparse_loss for the sparse stage");
    TORCH_CHECK(attention.lse.dim() == 3 && attention.lse.sizes() == attention.q_lat.sizes().slice(0, 3),
                "indexer_warmup_loss: attention lse must be ", attention.q_lat.sizes().slice(0, 3), ", got ",
                attention.lse.sizes());
    const Prepared p = prepare(indexer, attention, query_pos, key_valid);
    return run_kl(indexer, attention, at::Tensor(), query_pos, p, /*sparse=*/false, kernels, query_tile);
}

IndexerLoss indexer_sparse_loss(const IndexerOutput& indexer,
                                const AttentionInputs& attention,
                                const at::Tensor& topk,
                                const at::Tensor& query_pos,
                                const at::Tensor& key_valid,
                                int64_t query_tile) {
    check_inputs("indexer_sparse_loss", indexer, attention, query_pos, key_valid, query_tile);
    check_topk("indexer_sparse_loss", topk, attention.q_lat.size(0), attention.q_lat.size(1));
    const Prepared p = prepare(indexer, attention, query_pos, key_valid);
    return run_kl(indexer, attention, topk.to(p.kcat.device()), query_pos, p, /*sparse=*/true, /*kernels=*/false,
                  query_tile);
}

namespace {

// Mass of the head-averaged dense attention inside `topk` (defined) or inside each query's k heaviest keys.
double recall_of(const char* what,
                 const AttentionInputs& attention,
                 const at::Tensor& topk,
                 int64_t k,
                 const at::Tensor& query_pos,
                 const at::Tensor& key_valid,
                 int64_t query_tile) {
    const Fp32Region fp32;
    const AttentionInputs& a = attention;
    TORCH_CHECK(a.q_lat.dim() == 4 && a.q_pe.dim() == 4 && a.c_kv.dim() == 3 && a.k_pe.dim() == 3, what,
                ": attention inputs must be q_lat [B, L, H, C], q_pe [B, L, H, R], c_kv [B, S, C], "
                "k_pe [B, S, R]; got ",
                a.q_lat.sizes(), ", ", a.q_pe.sizes(), ", ", a.c_kv.sizes(), ", ", a.k_pe.sizes());
    // The shape checks of the losses, with a stand-in indexer of matching shape.
    const int64_t B = a.q_lat.size(0), L = a.q_lat.size(1), S = a.c_kv.size(1);
    const IndexerOutput stand_in{at::empty({B, L, 1, 1}, a.c_kv.options()), at::empty({B, S, 1}, a.c_kv.options()),
                                 at::empty({B, L, 1}, a.c_kv.options())};
    check_inputs(what, stand_in, a, query_pos, key_valid, query_tile);
    if (topk.defined()) check_topk(what, topk, B, L);
    TORCH_CHECK(topk.defined() || k >= 1, what, ": k must be >= 1, got ", k);
    const at::ScalarType dt = compute_dtype({a.q_lat, a.q_pe, a.c_kv, a.k_pe});
    const at::Tensor kcat = at::cat({a.c_kv.detach(), a.k_pe.detach()}, -1).to(dt);
    const at::Tensor kv = key_valid_or_ones(key_valid, B, S, a.c_kv);
    const at::Tensor qpos = query_pos.to(a.c_kv.device(), at::kLong);
    const at::Tensor valid = real_queries(qpos, kv);
    const at::Tensor tk = topk.defined() ? topk.to(a.c_kv.device()) : at::Tensor();
    const bool use_lse = a.dense && a.lse.defined();
    at::Tensor mass = at::zeros({}, kcat.options());
    for (int64_t t0 = 0; t0 < L; t0 += query_tile) {
        const int64_t n = std::min(query_tile, L - t0);
        const at::Tensor visible = visible_tile(qpos.narrow(1, t0, n), kv);
        at::Tensor p;
        if (use_lse) {
            p = dense_target(a.q_lat, a.q_pe, kcat, a.lse, visible, t0, n, a.scale);
        } else {
            at::Tensor scores = dense_scores(a.q_lat, a.q_pe, kcat, t0, n, a.scale);
            scores.masked_fill_(visible.unsqueeze(2).logical_not(), kNegInf);
            const at::Tensor lse = at::logsumexp(scores, -1, /*keepdim=*/true);
            p = at::where(visible.unsqueeze(2), (scores - lse).exp(), at::zeros_like(scores)).mean(2);
        }
        at::Tensor inside;  // [B, n]
        if (tk.defined()) {
            const Selection s = tile_selection(tk, t0, n, S);
            inside = p.gather(2, s.idx).masked_fill(s.sel.logical_not(), 0).sum(-1);
        } else {
            inside = std::get<0>(at::topk(p, std::min(k, S), -1)).sum(-1);  // invisible keys have p = 0
        }
        mass += at::where(valid.narrow(1, t0, n), inside, at::zeros_like(inside)).sum();
    }
    const int64_t num = valid.sum().item<int64_t>();
    if (num == 0) return std::numeric_limits<double>::quiet_NaN();
    return mass.item<double>() / double(num);
}

}  // namespace

double attention_recall(const AttentionInputs& attention,
                        const at::Tensor& topk,
                        const at::Tensor& query_pos,
                        const at::Tensor& key_valid,
                        int64_t query_tile) {
    TORCH_CHECK(topk.defined(), "attention_recall: topk is undefined");
    return recall_of("attention_recall", attention, topk, 0, query_pos, key_valid, query_tile);
}

double attention_recall_oracle(const AttentionInputs& attention,
                               int64_t k,
                               const at::Tensor& query_pos,
                               const at::Tensor& key_valid,
                               int64_t query_tile) {
    return recall_of("attention_recall_oracle", attention, at::Tensor(), k, query_pos, key_valid, query_tile);
}

}  // namespace dsrl::dsa
