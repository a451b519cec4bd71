#include "dsa/model.h"

#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <absl/strings/str_cat.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/precision.h"
#include "dsa/indexer_cuda.h"
#include "dsa/indexer_topk.h"
#include "dsa/linear_cuda.h"
#include "dsa/norm_rope_cuda.h"
#include "dsa/paged_slots_cuda.h"
#include "dsa/sparse_attention.h"
#include "moe/moe_block.h"
#include "moe/moe_cuda.h"

namespace dsrl::dsa {

#ifndef DSRL_WITH_CUDA
namespace cuda {  // builds without CUDA: the kernel never fits
bool paged_slots_fit(const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor paged_slots(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
    TORCH_CHECK(false, "paged_slots (cuda): this build of dsrl has no CUDA kernels");
}
bool paged_write_fits(const at::Tensor&, const std::vector<at::Tensor>&, const std::vector<at::Tensor>&) {
    return false;
}
void paged_write(const at::Tensor&, const std::vector<at::Tensor>&, const std::vector<at::Tensor>&) {
    TORCH_CHECK(false, "paged_write (cuda): this build of dsrl has no CUDA kernels");
}
bool paged_step_inputs_fit(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&) { return false; }
PagedStepInputs paged_step_inputs(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&, double) {
    TORCH_CHECK(false, "paged_step_inputs (cuda): this build of dsrl has no CUDA kernels");
}
bool decode_linear_fits(const at::Tensor&, const at::Tensor&) { return false; }
bool decode_heads_fits(const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor decode_heads(const at::Tensor&, const at::Tensor&) {
    TORCH_CHECK(false, "decode_heads (cuda): this build of dsrl has no CUDA kernels");
}
at::Tensor decode_linear(const at::Tensor&, const at::Tensor&, bool) {
    TORCH_CHECK(false, "decode_linear (cuda): this build of dsrl has no CUDA kernels");
}
void decode_linear_f32_out(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
    TORCH_CHECK(false, "decode_linear (cuda): this build of dsrl has no CUDA kernels");
}
}  // namespace cuda
#endif

namespace {

// transformers builds q_a_layernorm / kv_a_layernorm / the indexer's k_norm with eps 1e-6 regardless of
// rms_norm_eps (which only reaches the decoder-layer and final norms).
constexpr double kLatentNormEps = 1e-6;

// Everything a layer needs about the current call.
struct Step {
    int64_t batch = 0;
    int64_t len = 0;       // new tokens
    int64_t offset = 0;    // cached positions before them
    at::Tensor cos, sin;   // [B, L, R/2] fp32
    at::Tensor query_pos;  // [B, L] int64 key index of each query
    at::Tensor key_valid;  // [B, S] bool
    bool dense = false;
    at::Tensor dense_slots;  // a dense paged decode: [1, B·L, S] slots of the keys each query sees (every layer's)
};

// RMSNorm and RoPE run as one kernel each (dsa/norm_rope_cuda.h) where they fit — CUDA, a forward without autograd
// (the rollout's decode and prefill, reference forwards), model.impl not reference — else as the ATen formulas, their
// oracles. Both round alike; a decode step of a small model launches about a third fewer kernels.
bool fused(const ModelConfig& c, const at::Tensor& x, std::initializer_list<const at::Tensor*> others) {
    return built_with_cuda() && c.impl != Impl::kReference && cuda::norm_rope_kernels_fit(x, others);
}

// Whether x · wᵀ runs on dsrl's decode kernel: where the forward's kernels run and it takes the shapes (a decode
// step's bf16 / fp16 projections without autograd: dsa/linear_cuda.h).
bool decode_kernel(const at::Tensor& x, const at::Tensor& w, const ModelConfig& c) {
    return built_with_cuda() && c.impl != Impl::kReference && cuda::decode_linear_fits(x, w);
}

// A projection x · wᵀ: dsrl's decode kernel where it runs, else at::linear.
at::Tensor project(const at::Tensor& x, const at::Tensor& w, const ModelConfig& c) {
    return decode_kernel(x, w, c) ? cuda::decode_linear(x, w) : at::linear(x, w);
}

at::Tensor norm(const at::Tensor& x, const at::Tensor& weight, double eps, const ModelConfig& c) {
    return fused(c, x, {&weight}) ? cuda::rms_norm(x, weight, eps) : rms_norm(x, weight, eps);
}

// The indexer key's LayerNorm runs as a kernel where the forward's kernels run and autocast is off (it reads a column
// range of the stacked projection's output in place); else at::layer_norm.
bool layer_norm_fits(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const ModelConfig& c) {
    return fused(c, x, {&w, &b}) && !at::autocast::is_autocast_enabled(x.device().type()) &&
           cuda::layer_norm_takes(x, w, b);
}

// x + delta (the residual stream after a sublayer) and its RMSNorm (the next sublayer's input), one kernel where the
// forward's kernels run and the kernel takes x and delta.
std::pair<at::Tensor, at::Tensor> add_norm(
    const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w, double eps, const ModelConfig& c) {
    if (fused(c, x, {&delta, &w}) && cuda::add_rms_norm_takes(x, delta)) return cuda::add_rms_norm(x, delta, w, eps);
    at::Tensor sum = x + delta;
    at::Tensor normed = norm(sum, w, eps, c);
    return {std::move(sum), std::move(normed)};
}

// A job's result written into the cache pool's rows at `slots` (in the pool's type) when the job names a pool; the
// result is then no longer needed (undefined, as the kernels return it).
void to_pool(at::Tensor& result, const at::Tensor& pool, const at::Tensor& slots) {
    if (!pool.defined()) return;
    pool.index_copy_(0, slots, result.reshape({-1, pool.size(1)}).to(pool.scalar_type()));
    result = at::Tensor();
}

// The jobs the kernel takes (fits) as one launch (kernel), the others one op each (single); the results in order.
template <typename Job, typename Fits, typename Kernel, typename Single>
std::vector<at::Tensor> in_one_launch(const std::vector<Job>& jobs, Fits fits, Kernel kernel, Single single) {
    std::vector<at::Tensor> out(jobs.size());
    std::vector<Job> batch;
    std::vector<size_t> slot;
    for (size_t i = 0; i < jobs.size(); ++i) {
        if (fits(jobs[i])) {
            batch.push_back(jobs[i]);
            slot.push_back(i);
        } else {
            out[i] = single(jobs[i]);
            to_pool(out[i], jobs[i].pool, jobs[i].slots);
        }
    }
    if (!batch.empty()) {
        std::vector<at::Tensor> r = kernel(batch);
        for (size_t k = 0; k < slot.size(); ++k) out[slot[k]] = std::move(r[k]);
    }
    return out;
}

// A layer's row norms — RMSNorms, a LayerNorm for a job with a bias (the indexer's key), none for a job without a
// weight — each then rotated where the job says (the keys' RoPE), as one kernel for the jobs the kernel takes, the
// others as the ATen ops.
std::vector<at::Tensor> norm_jobs(const std::vector<cuda::NormJob>& jobs, const ModelConfig& c) {
    return in_one_launch(
        jobs,
        [&](const cuda::NormJob& j) {
            const bool norm = !j.weight.defined() ? fused(c, j.x, {})
                              : j.bias.defined()  ? layer_norm_fits(j.x, j.weight, j.bias, c)
                                                  : fused(c, j.x, {&j.weight});
            return norm && (j.rope == 0 || (fused(c, j.x, {&j.cos, &j.sin}) && cuda::norm_rope_fits(j)));
        },
        cuda::norms,
        [](const cuda::NormJob& j) {
            const at::Tensor y = !j.weight.defined() ? j.x
                                 : j.bias.defined()  ? at::layer_norm(j.x, {j.x.size(-1)}, j.weight, j.bias, j.eps)
                                                     : rms_norm(j.x, j.weight, j.eps);
            return j.rope > 0 ? apply_rope(y, j.cos, j.sin, j.rope, j.interleaved) : y;
        });
}

// A layer's rotations (the attention's query and key, the indexer's query and key) as one kernel for the jobs the
// kernel takes, the others as the ATen formulas (apply_rope).
std::vector<at::Tensor> rope_jobs(const std::vector<cuda::RopeJob>& jobs, const ModelConfig& c) {
    return in_one_launch(
        jobs,
        [&](const cuda::RopeJob& j) {
            return fused(c, j.x, {&j.cos, &j.sin});
        },
        cuda::ropes, [](const cuda::RopeJob& j) { return apply_rope(j.x, j.cos, j.sin, j.rope, j.interleaved); });
}

// The absorbed attention's per-head products, x [B, L, H, D_in] · w [H, D_in, D_out] (or w's transpose when
// `transposed`, w [H, D_out, D_in]) -> [B, L, H, D_out]. Where the forward's kernels run (fused()) one batched
// matmul reads x and w through their strides and writes a contiguous result: einsum's permuted operand and result cost
// two copies (kernels) per product, four per layer and decode step. Elsewhere the einsum, the oracle.
at::Tensor per_head(const at::Tensor& x, const at::Tensor& w, bool transposed, const ModelConfig& c) {
    if (!fused(c, x, {&w})) return at::einsum(transposed ? "blhc,hvc->blhv" : "blhn,hnc->blhc", {x, w});
    if (transposed && cuda::decode_heads_fits(x, w)) return cuda::decode_heads(x, w);  // a decode step's W_UV
    const at::Tensor wt = transposed ? w.transpose(1, 2) : w;                          // [H, D_in, D_out]
    const int64_t B = x.size(0), L = x.size(1), H = x.size(2);
    const at::Tensor rows = x.reshape({B * L, H, x.size(3)});  // a view: x's leading dims are dense
    at::Tensor out = at::empty({B * L, H, wt.size(2)}, x.options());
    at::Tensor by_head = out.transpose(0, 1);  // [H, B·L, D_out], written in place
    at::bmm_out(by_head, rows.transpose(0, 1), wt.to(x.scalar_type()));
    return out.view({B, L, H, wt.size(2)});
}

// Writes `value` ([B, L, D]) into cache slots [offset, offset + L) and returns the filled prefix [B, S, D].
at::Tensor append(at::Tensor& slots, const at::Tensor& value, int64_t offset) {
    slots.narrow(1, offset, value.size(1)).copy_(value);
    return slots.narrow(1, 0, offset + value.size(1));
}

// A replayed key set of one layer, checked: [B, L, index_topk] keys in [−1, S), none after its query.
at::Tensor replayed_topk(const at::Tensor& given, int64_t layer, int64_t k, const Step& st, int64_t num_keys) {
    TORCH_CHECK(given.defined() && given.dim() == 3 && given.size(0) == st.batch && given.size(1) == st.len &&
                    given.size(2) == k && !at::isFloatingType(given.scalar_type()),
                "forward: the replayed key sets of layer ", layer, " must be integer [", st.batch, ", ", st.len, ", ",
                k, "] (index_topk ", k, "), got ", given.defined() ? given.sizes() : at::IntArrayRef{});
    const at::Tensor t = given.to(st.query_pos.device(), at::kInt);
    const at::Tensor bad = (t < -1).logical_or(t >= num_keys).logical_or(t > st.query_pos.unsqueeze(-1));
    TORCH_CHECK(!bad.any().item<bool>(), "forward: the replayed key sets of layer ", layer, " hold a key outside [0, ",
                num_keys, ") or after its query");
    return t;
}

// The pool slots a paged decode's queries read, [1, B·L, k] (−1 where none): each query's selected keys (topk
// [B, L, k]) or, with topk undefined, every key it sees (a dense step: no more than index_topk). One kernel where it
// fits, else the ATen gather.
at::Tensor read_slots(const at::Tensor& read, const at::Tensor& topk, const Step& st, const ModelConfig& c) {
    const int64_t B = st.batch, L = st.len;
    if (built_with_cuda() && c.impl != Impl::kReference && cuda::paged_slots_fit(read, topk)) {
        const at::Tensor idx = cuda::paged_slots(read, topk, st.key_valid.contiguous(), st.query_pos.contiguous(), L);
        return idx.view({1, B * L, idx.size(2)});
    }
    const at::Tensor none = at::full({}, -1, read.options());
    if (!topk.defined()) {
        const int64_t S = read.size(1);
        const at::Tensor visible = st.key_valid.unsqueeze(1).logical_and(
            at::arange(S, read.options()).view({1, 1, S}) <= st.query_pos.unsqueeze(-1));
        return at::where(visible, read.unsqueeze(1).expand({B, L, S}), none).reshape({1, B * L, S});
    }
    const int64_t k = topk.size(2);
    const at::Tensor sel = topk.to(at::kLong);
    const at::Tensor slot = read.gather(1, sel.clamp_min(0).view({B, L * k})).view({B, L, k});
    return at::where(sel >= 0, slot, none).view({1, B * L, k});
}

struct AttentionResult {
    at::Tensor out;   // [B, L, H]
    at::Tensor topk;  // [B, L, index_topk] int32, when computed
    IndexerOutput indexer;
    AttentionInputs attention;
};

// Whether a layer's attention runs its indexer: its outputs or cached keys are needed, or it selects the keys (a
// sparse step not replaying recorded sets).
bool runs_indexer(const ForwardOptions& opt, const Step& st, const LayerCache* cache) {
    const bool replayed = static_cast<bool>(opt.replay_topk) && !st.dense;
    return opt.return_indexer || cache != nullptr || opt.paged != nullptr ||
           (!replayed && (!st.dense || opt.return_topk));
}

// The indexer's fp32 head weights scale 1 / sqrt(index_n_heads).
double indexer_weight_scale(const ModelConfig& c) { return 1.0 / std::sqrt(double(c.index_n_heads)); }

// `iw_given`: the indexer's head weights of h, when the kernel that normalized h computed them (add_norm_proj).
AttentionResult attention(const at::Tensor& h,
                          const LayerWeights& l,
                          const ModelConfig& c,
                          const Step& st,
                          const ForwardOptions& opt,
                          LayerCache* cache,
                          int64_t layer,
                          const at::Tensor& iw_given) {
    const int64_t B = st.batch, L = st.len;
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t v_dim = c.v_head_dim, lora = c.kv_lora_rank;
    const at::Tensor cos_h = st.cos.unsqueeze(2), sin_h = st.sin.unsqueeze(2);

    // Query path: c_q = RMSNorm(q_a(x)); q = q_b(c_q) -> [B, L, heads, nope | rope]. KV latent: [c_kv | k_pe], one
    // entry per token shared by all heads. The norms and the rotations go as one kernel each (norm_jobs, rope_jobs).
    // With the decode-only stacks (Model::fuse_projections; no autograd) one GEMM computes q_a, kv_a and the indexer's
    // key projection, another q_b and the indexer's query; the pieces are column ranges of their outputs.
    const int64_t ih = c.index_n_heads, id = c.index_head_dim;
    const bool stacked = !at::GradMode::is_enabled() && l.fused_a.defined() && l.fused_b.defined();
    at::Tensor q_a_out, kv, wk_out;
    if (stacked) {
        const at::Tensor a = project(h, l.fused_a, c);
        const int64_t q_lora = l.attn.q_a_proj.size(0);
        q_a_out = a.narrow(-1, 0, q_lora);
        kv = a.narrow(-1, q_lora, lora + rope);
        wk_out = a.narrow(-1, q_lora + lora + rope, id);
    } else {
        kv = at::linear(h, l.attn.kv_a_proj_with_mqa);
        q_a_out = at::linear(h, l.attn.q_a_proj);
    }
    // Keep-indexer replay: the sparse path attends over the given sets, and the indexer is skipped unless its
    // outputs or its cached keys are needed.
    const bool replayed = static_cast<bool>(opt.replay_topk) && !st.dense;
    const bool run_indexer = runs_indexer(opt, st, cache);
    // Lightning indexer: rope part first, half-split RoPE; weights in fp32. With detached inputs (sparse_train)
    // the indexer is a separate graph hanging off h and c_q: its loss reaches only the indexer's weights.
    const at::Tensor ih_in = opt.detach_indexer_inputs ? h.detach() : h;

    // A paged decode's new latent, rope key and index key go straight to their pool slots from the norm and rotation
    // kernels (nothing reads them but through the pool); a paged prefill copies them there after.
    const bool paged_read = opt.paged != nullptr && opt.paged->read_slots.defined();
    LayerCache* pool = opt.paged != nullptr ? &opt.paged->cache->layers[layer] : nullptr;
    const at::Tensor write_slots = opt.paged != nullptr ? opt.paged->write_slots.reshape({-1}) : at::Tensor();
    const LayerCache into = paged_read ? *pool : LayerCache{};  // a paged decode's destinations (none otherwise)
    const at::Tensor into_slots = paged_read ? write_slots : at::Tensor();

    // The query and latent RMSNorms, the rope key's rotation and the indexer key's LayerNorm + rotation (one kernel
    // where they fit), then the rotations of the attention's and the indexer's queries (one kernel) — or, in a paged
    // decode step on the kernels, by their consumers as they read them (QueryRope).
    std::vector<cuda::NormJob> norm_in = {
        {q_a_out, l.attn.q_a_layernorm, {}, kLatentNormEps},
        {kv.narrow(-1, 0, lora), l.attn.kv_a_layernorm, {}, kLatentNormEps, into.c_kv, into_slots},
        {.x = kv.narrow(-1, lora, rope),
         .pool = into.k_pe,
         .slots = into_slots,
         .cos = st.cos,
         .sin = st.sin,
         .rope = rope,
         .interleaved = true}};
    if (run_indexer) {
        norm_in.push_back({.x = stacked ? wk_out : at::linear(ih_in, l.indexer.wk),
                           .weight = l.indexer.k_norm_weight,
                           .bias = l.indexer.k_norm_bias,
                           .eps = kLatentNormEps,
                           .pool = into.index_k,
                           .slots = into_slots,
                           .cos = st.cos,
                           .sin = st.sin,
                           .rope = rope,
                           .interleaved = false});
    }
    const std::vector<at::Tensor> normed = norm_jobs(norm_in, c);
    const at::Tensor& c_q = normed[0];
    const at::Tensor qb_out = project(c_q, stacked ? l.fused_b : l.attn.q_b_proj, c);
    // Absorbed stacks (LayerWeights::absorbed): the GEMM gives q̃ = q_nope · W_UK itself, then the rope parts.
    const bool absorbed = stacked && l.absorbed;
    at::Tensor q, q_lat, q_rope;
    if (absorbed) {
        q_lat = qb_out.narrow(-1, 0, heads * lora).view({B, L, heads, lora});
        q_rope = qb_out.narrow(-1, heads * lora, heads * rope).view({B, L, heads, rope});
    } else {
        q = qb_out.narrow(-1, 0, heads * (nope + rope)).view({B, L, heads, nope + rope});
        q_rope = q.narrow(-1, nope, rope);
    }
    const int64_t q_width = heads * (absorbed ? lora + rope : nope + rope);
    // A paged decode on the kernels: the queries go unrotated to their consumers, which rotate them as they read them
    // (or rotate_query where a consumer's kernel does not run).
    const bool consumers_rotate =
        paged_read && built_with_cuda() && c.impl != Impl::kReference && !at::GradMode::is_enabled();
    const QueryRope pe_rope{st.cos, st.sin, rope, /*interleaved=*/true}, iq_rope{st.cos, st.sin, rope, false};
    std::vector<cuda::RopeJob> rope_in;
    if (!consumers_rotate) rope_in.push_back({q_rope, cos_h, sin_h, rope, /*interleaved=*/true});
    at::Tensor iq_lin;
    if (run_indexer) {
        const at::Tensor iq_in = opt.detach_indexer_inputs ? c_q.detach() : c_q;
        iq_lin =
            (stacked ? qb_out.narrow(-1, q_width, ih * id) : at::linear(iq_in, l.indexer.wq_b)).view({B, L, ih, id});
        if (!consumers_rotate) rope_in.push_back({iq_lin, cos_h, sin_h, rope, /*interleaved=*/false});
    }
    const std::vector<at::Tensor> rotated = rope_in.empty() ? std::vector<at::Tensor>{} : rope_jobs(rope_in, c);
    at::Tensor c_kv = normed[1], k_pe = normed[2];
    at::Tensor q_pe = consumers_rotate ? q_rope : rotated[0];  // unrotated with consumers_rotate
    at::Tensor iq, ik, iw;
    if (run_indexer) {
        iq = consumers_rotate ? iq_lin : rotated[1];
        ik = normed[3];
        // The indexer's head weights stay fp32 under bf16 autocast (SPEC §2.2): one kernel where the forward's kernels
        // run, else the cast, the fp32 matmul and the scale.
        const double w_scale = indexer_weight_scale(c);
        if (iw_given.defined()) {
            iw = iw_given;
        } else if (built_with_cuda() && c.impl != Impl::kReference &&
                   cuda::proj_fp32_fits(ih_in, l.indexer.weights_proj)) {
            iw = cuda::proj_fp32(ih_in, l.indexer.weights_proj, w_scale);
        } else {
            Fp32Region fp32;
            iw = at::linear(ih_in.to(at::kFloat), l.indexer.weights_proj.to(at::kFloat)) * w_scale;
        }
    }

    if (cache != nullptr) {
        c_kv = append(cache->c_kv, c_kv, st.offset);
        k_pe = append(cache->k_pe, k_pe, st.offset);
        ik = append(cache->index_k, ik, st.offset);
    }
    // Paged cache: a prefill's new entries go to their slots; a decode reads the row's index keys through its slots.
    cuda::PagedTopk paged_topk;  // a paged decode's key sets and their slots, where the kernels select them
    if (opt.paged != nullptr && !paged_read) {
        const std::vector<at::Tensor> pools = {pool->c_kv, pool->k_pe, pool->index_k};
        const std::vector<at::Tensor> rows = {c_kv.reshape({B * L, -1}), k_pe.reshape({B * L, -1}),
                                              ik.reshape({B * L, -1})};
        if (built_with_cuda() && c.impl != Impl::kReference && cuda::paged_write_fits(write_slots, pools, rows)) {
            cuda::paged_write(write_slots, pools, rows);  // one kernel for the three copies and their casts
        } else {
            for (size_t i = 0; i < pools.size(); ++i)
                pools[i].index_copy_(0, write_slots, rows[i].to(pools[i].scalar_type()));
        }
    }
    if (paged_read && (!st.dense || opt.return_topk)) {  // the indexer scores the row's keys
        const at::Tensor& read = opt.paged->read_slots;
        if (built_with_cuda() && c.impl != Impl::kReference &&
            cuda::indexer_paged_fits(iq, pool->index_k, iw, read, c.index_topk)) {
            // Two kernels read the keys in place through the slots; the top-k also gives the attention's slots.
            paged_topk = cuda::indexer_paged_topk(iq, pool->index_k, read, iw, 1.0 / std::sqrt(double(id)),
                                                  st.query_pos, st.key_valid, c.index_topk, /*one_launch=*/true,
                                                  consumers_rotate ? &iq_rope : nullptr);
        } else {
            if (consumers_rotate) iq = rotate_query(iq, iq_rope, c.impl);
            ik = pool->index_k.index_select(0, read.reshape({-1})).view({B, read.size(1), id});
        }
    }

    AttentionResult r;
    if (opt.return_indexer) r.indexer = {iq, ik, iw};
    if (replayed) {
        r.topk = replayed_topk(opt.replay_topk(layer), layer, c.index_topk, st, c_kv.size(1));
    } else if (paged_topk.keys.defined()) {
        r.topk = paged_topk.keys;
    } else if (!st.dense || opt.return_topk) {
        at::NoGradGuard no_grad;  // a discrete selection: the indexer learns only through its own loss
        r.topk = select_topk(iq, ik, iw, 1.0 / std::sqrt(double(id)), st.query_pos, st.key_valid, c.index_topk, c.impl,
                             opt.query_chunk);
    }

    // Absorbed (MQA) form: q̃ = q_nope · W_UK in latent space; o_h = W_UV · o_lat.
    const at::Tensor w_kv = l.attn.kv_b_proj.view({heads, nope + v_dim, lora});
    if (!absorbed) q_lat = per_head(q.narrow(-1, 0, nope), w_kv.narrow(1, 0, nope), /*transposed=*/false, c);
    // o = o_proj(W_UV · o_lat per head). (W_UV absorbed into o_proj as well measured no faster on an H100: one GEMM
    // over heads · kv_lora inputs took as long as the batched matmul and o_proj together; docs/kernel_notes.md.)
    const auto output = [&](const at::Tensor& o_lat) {
        const at::Tensor o = per_head(o_lat.view({B, L, heads, lora}), w_kv.narrow(1, nope, v_dim), true, c);
        return project(o.reshape({B, L, heads * v_dim}), l.attn.o_proj, c);
    };
    const double scale = mla_softmax_scale(c);
    if (paged_read) {
        // The selected keys' slots (a dense step's, the same for every layer, come with the step); the queries of
        // every row as one sequence over the pool's entries.
        const PagedKvCache& pc = *opt.paged->cache;
        const at::Tensor idx = st.dense                     ? st.dense_slots
                               : paged_topk.slots.defined() ? paged_topk.slots.view({1, B * L, c.index_topk})
                                                            : read_slots(opt.paged->read_slots, r.topk, st, c);
        const AttentionOutput att =
            sparse_attention(q_lat.reshape({1, B * L, heads, lora}), q_pe.reshape({1, B * L, heads, rope}),
                             pc.layers[layer].c_kv.unsqueeze(0), pc.layers[layer].k_pe.unsqueeze(0), idx, scale, c.impl,
                             opt.query_chunk, /*check_indices=*/false,  // slots of the pool by construction
                             consumers_rotate ? &pe_rope : nullptr);
        r.out = output(att.out);
        return r;
    }
    const AttentionOutput att = st.dense
                                    ? dense_mla_attention(q_lat, q_pe, c_kv, k_pe, st.query_pos, st.key_valid, scale)
                                    : sparse_attention(q_lat, q_pe, c_kv, k_pe, r.topk, scale, c.impl, opt.query_chunk);
    if (opt.return_attention) {
        r.attention = {q_lat.detach(), q_pe.detach(), c_kv.detach(), k_pe.detach(), att.lse.detach(), scale, st.dense};
    }
    r.out = output(att.out);
    return r;
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return weight * normed.to(x.scalar_type());
}

Model::Model(ModelConfig cfg, ModelWeights weights)
    : cfg_(std::move(cfg)), w_(std::move(weights)), rope_(rope_table(cfg_)) {
    // Tied: lm_head is embed_tokens itself (weights moved or replaced tensor by tensor never leave a stale copy).
    if (cfg_.tie_word_embeddings) w_.lm_head = w_.embed_tokens;
    rope_.inv_freq = rope_.inv_freq.to(w_.embed_tokens.device());
    for (const LayerWeights& l : w_.layers) {
        // All experts: a model holding a slice is made by set_expert_parallel, which also routes across the group.
        TORCH_CHECK(
            !l.is_moe || !l.moe.experts.gate_proj.defined() || l.moe.experts.gate_proj.size(0) == cfg_.n_routed_experts,
            "Model: MoE weights hold ", l.moe.experts.gate_proj.size(0), " experts, the config ", cfg_.n_routed_experts,
            " (a rank's experts only? use set_expert_parallel)");
    }
}

Model Model::random(const ModelConfig& cfg, uint64_t seed, c10::Device device) {
    return Model(cfg, init_weights(cfg, seed, device));
}

Model Model::load(const std::string& dir, const ModelRuntime& run, c10::Device device) {
    const HfCheckpointReader reader = HfCheckpointReader::open(dir);
    ModelRuntime runtime = run;
    runtime.path = dir;
    const ModelConfig cfg{runtime, reader.arch()};
    Model m(cfg, load_weights(reader, cfg, device));
    m.passthrough_ = reader.extra_tensors();
    m.nextn_layers_ = reader.nextn_layers();
    if (!m.passthrough_.empty()) {
        DSRL_LOG(info) << dir << ": " << m.passthrough_.size()
                       << " tensors of the multi-token-prediction layer kept unchanged for saving";
    }
    return m;
}

void Model::save(const std::string& dir, const SaveOptions& opt) const {
    DSRL_INTERNAL_ASSERT(expert_parallel() == nullptr || ep_.size() == 1,
                         "Model::save under expert parallelism: every rank of the group calls save_distributed()");
    save_distributed(dir, opt, /*write=*/true);
}

void Model::save_distributed(const std::string& dir, const SaveOptions& opt, bool write) const {
    SaveOptions o = opt;
    if (o.companion_dir.empty()) o.companion_dir = cfg_.path;  // the tokenizer of the checkpoint it came from
    o.nextn_layers = nextn_layers_;
    if (!passthrough_.empty()) o.passthrough = &passthrough_;
    if (expert_parallel() == nullptr || ep_.size() == 1) {
        if (write) save_hf_checkpoint(dir, cfg_, hf_named_tensors(w_, cfg_), o);
        return;
    }
    // Under expert parallelism a group writes when any of its ranks was asked to; each rank writes its own experts
    // (nothing is gathered), the group's rank 0 also the rest of the model.
    at::Tensor asked = at::full({1}, write ? 1 : 0, at::kLong);
    ep_.group->all_reduce(asked, dist::ReduceOp::kMax);
    if (asked.item<int64_t>() == 0) return;
    o.writers = ep_.group;
    if (ep_.rank() != 0) o.passthrough = nullptr;  // the leader writes them
    save_hf_checkpoint(
        dir, cfg_,
        hf_named_tensors(w_, cfg_, ep_.first_expert(), ep_.rank() == 0 ? HfPart::kAll : HfPart::kRoutedExperts), o);
}

std::vector<std::pair<std::string, at::Tensor>> Model::gather_hf_tensors() const {
    if (expert_parallel() == nullptr || ep_.size() == 1) return hf_named_tensors(w_, cfg_);
    // Every layer's experts from every rank of the group, in rank order: [P, E/P, ...] -> [E, ...].
    ModelWeights all = w_;
    for (LayerWeights& l : all.layers) {
        if (!l.is_moe) continue;
        for (at::Tensor* t : {&l.moe.experts.gate_proj, &l.moe.experts.up_proj, &l.moe.experts.down_proj}) {
            const at::Tensor local = t->detach().contiguous();
            std::vector<int64_t> shape = local.sizes().vec();
            shape[0] = cfg_.n_routed_experts;
            *t = ep_.group->all_gather(local).reshape(shape);
        }
    }
    return hf_named_tensors(all, cfg_);
}

Model Model::clone(c10::Device device) const {
    ModelWeights w = w_;
    for (NamedTensor& t : dsa::named_tensors(w, cfg_)) *t.tensor = t.tensor->detach().to(device).clone();
    if (cfg_.tie_word_embeddings) w.lm_head = w.embed_tokens;
    if (expert_parallel() == nullptr) {
        Model m(cfg_, w);
        m.passthrough_ = passthrough_;  // views of the mapped files: shared, never modified
        m.nextn_layers_ = nextn_layers_;
        return m;
    }
    // Constructed with every expert's slot, then given this rank's experts (the constructor checks full layers).
    ModelWeights shell = w;
    for (LayerWeights& l : shell.layers) {
        if (l.is_moe) l.moe.experts = {};
    }
    Model m(cfg_, shell);
    for (size_t i = 0; i < w.layers.size(); ++i) m.w_.layers[i].moe.experts = w.layers[i].moe.experts;
    m.ep_ = ep_;
    m.passthrough_ = passthrough_;
    m.nextn_layers_ = nextn_layers_;
    return m;
}

Model Model::autocast_weights(at::ScalarType dtype) const {
    const at::NoGradGuard no_grad;
    Model m = *this;
    const auto cast = [dtype](at::Tensor& t) {
        if (t.defined() && t.scalar_type() != dtype) t = t.detach().to(dtype);
    };
    for (LayerWeights& l : m.w_.layers) {
        for (at::Tensor* t : {&l.attn.q_a_proj, &l.attn.q_b_proj, &l.attn.kv_a_proj_with_mqa, &l.attn.kv_b_proj,
                              &l.attn.o_proj, &l.indexer.wq_b, &l.indexer.wk}) {
            cast(*t);
        }
        for (moe::SwiGluWeights* mlp : {&l.mlp, &l.moe.shared, &l.moe.experts}) {
            cast(mlp->gate_proj);
            cast(mlp->up_proj);
            cast(mlp->down_proj);
        }
    }
    cast(m.w_.lm_head);  // its own handle: tied embeddings keep embed_tokens as it is
    return m;
}

namespace {

// A layer's stacks of projections (LayerWeights::fused_a / fused_b / fused_gate_up), or nothing where their dtypes or
// devices differ.
bool fusable(std::initializer_list<const at::Tensor*> ts) {
    const at::Tensor& first = **ts.begin();
    for (const at::Tensor* t : ts) {
        if (!t->defined() || t->dim() != 2 || t->scalar_type() != first.scalar_type() ||
            t->device() != first.device() || t->size(1) != first.size(1))
            return false;
    }
    return true;
}

// The absorbed query rows of a layer, [W_q_lat (heads · lora) | rope rows (heads · rope)] from q_b_proj and kv_b_proj:
// W_q_lat(h) = W_UK(h)ᵀ · W_q_nope(h), products in fp32, rounded once to q_b_proj's dtype.
at::Tensor absorbed_query_rows(const MlaWeights& a, const ModelConfig& c) {
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t lora = c.kv_lora_rank, q_in = a.q_b_proj.size(1);
    const at::Tensor wqb = a.q_b_proj.detach().to(at::kFloat).view({heads, nope + rope, q_in});
    const at::Tensor w_uk = a.kv_b_proj.detach().to(at::kFloat).view({heads, -1, lora}).narrow(1, 0, nope);
    const at::Tensor q_lat = at::bmm(w_uk.transpose(1, 2), wqb.narrow(1, 0, nope)).reshape({heads * lora, q_in});
    return at::cat({q_lat, wqb.narrow(1, nope, rope).reshape({heads * rope, q_in})}).to(a.q_b_proj.scalar_type());
}

// Extra bytes of a layer's absorbed query rows over the factors they replace (q_b_proj's nope rows and W_UK).
int64_t absorbed_extra_bytes(const MlaWeights& a, const ModelConfig& c) {
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim, lora = c.kv_lora_rank;
    const int64_t q_in = a.q_b_proj.size(1);
    return (heads * lora * q_in - heads * nope * (q_in + lora)) * a.q_b_proj.element_size();
}

}  // namespace

Model Model::fuse_projections(bool absorb, int64_t max_stack_bytes) const {
    const at::NoGradGuard no_grad;
    Model m = *this;
    const auto small = [max_stack_bytes](std::initializer_list<const at::Tensor*> ts) {
        int64_t bytes = 0;
        for (const at::Tensor* t : ts) bytes += static_cast<int64_t>(t->nbytes());
        return bytes <= max_stack_bytes;
    };
    for (LayerWeights& l : m.w_.layers) {
        const std::initializer_list<const at::Tensor*> mlp = {&l.mlp.gate_proj, &l.mlp.up_proj};
        if (!l.is_moe && fusable(mlp) && small(mlp)) {
            l.fused_gate_up = at::cat({l.mlp.gate_proj.detach(), l.mlp.up_proj.detach()});
        }
        // The attention's two stacks are read together (both or neither).
        const std::initializer_list<const at::Tensor*> a = {&l.attn.q_a_proj, &l.attn.kv_a_proj_with_mqa,
                                                            &l.indexer.wk};
        const std::initializer_list<const at::Tensor*> b = {&l.attn.q_b_proj, &l.indexer.wq_b};
        if (!fusable(a) || !small(a) || !fusable(b) || !small(b)) continue;
        l.fused_a = at::cat({l.attn.q_a_proj.detach(), l.attn.kv_a_proj_with_mqa.detach(), l.indexer.wk.detach()});
        l.absorbed = absorb && l.attn.kv_b_proj.scalar_type() == l.attn.q_b_proj.scalar_type() &&
                     absorbed_extra_bytes(l.attn, cfg_) <= kAbsorbMaxExtraBytes;
        l.fused_b = at::cat(
            {l.absorbed ? absorbed_query_rows(l.attn, cfg_) : l.attn.q_b_proj.detach(), l.indexer.wq_b.detach()});
    }
    return m;
}

void Model::idle_forward() const {
    if (expert_parallel() == nullptr || ep_.size() == 1) return;
    // Each MoE layer's three exchanges, in layer order, with no rows; chained so a backward (if any) runs them in
    // reverse layer order, as a real one does.
    const auto opts = w_.embed_tokens.options();
    at::Tensor x = at::zeros({0, cfg_.hidden_size}, opts);
    const at::Tensor idx = at::zeros({0, cfg_.num_experts_per_tok}, opts.dtype(at::kLong));
    const at::Tensor weights = at::zeros({0, cfg_.num_experts_per_tok}, opts.dtype(at::kFloat));
    for (const LayerWeights& l : w_.layers) {
        if (l.is_moe) x = x + moe::routed_experts_ep(x, idx, weights, l.moe.experts, ep_);
    }
}

bool ForwardLockstep::any_busy(bool mine) const {
    const moe::ExpertParallel* ep = model_.expert_parallel();
    at::Tensor t = at::full({1}, mine ? 1 : 0, at::kLong);
    ep->group->all_reduce(t, dist::ReduceOp::kMax);
    return t.item<int64_t>() != 0;
}

bool ForwardLockstep::any(bool mine) const {
    const moe::ExpertParallel* ep = model_.expert_parallel();
    if (ep == nullptr || ep->size() == 1) return mine;
    return any_busy(mine);
}

void ForwardLockstep::step() const {
    const moe::ExpertParallel* ep = model_.expert_parallel();
    if (ep != nullptr && ep->size() > 1) any_busy(true);
}

void ForwardLockstep::finish() const {
    const moe::ExpertParallel* ep = model_.expert_parallel();
    if (ep == nullptr || ep->size() == 1) return;
    while (any_busy(false)) model_.idle_forward();
}

void Model::set_expert_parallel(const moe::ExpertParallel& ep) {
    DSRL_INTERNAL_ASSERT(ep_.group == nullptr, "Model::set_expert_parallel: already set");
    moe::ExpertParallel e = ep;
    e.num_experts = cfg_.n_routed_experts;
    e.check();
    if (e.size() == 1) return;
    at::NoGradGuard no_grad;
    for (LayerWeights& l : w_.layers) {
        if (!l.is_moe) continue;
        const moe::SwiGluWeights mine = e.local(l.moe.experts);
        l.moe.experts = {mine.gate_proj.clone(), mine.up_proj.clone(), mine.down_proj.clone()};  // frees the rest
    }
    ep_ = e;
}

KvCache Model::new_cache(int64_t batch, int64_t capacity) const {
    TORCH_CHECK(batch >= 1 && capacity >= 1, "new_cache: batch and capacity must be >= 1, got ", batch, ", ", capacity);
    const auto opts = at::TensorOptions().device(device()).dtype(model_dtype(cfg_));
    KvCache cache;
    cache.capacity = capacity;
    cache.key_valid = at::zeros({batch, capacity}, opts.dtype(at::kBool));
    cache.next_pos = at::zeros({batch}, opts.dtype(at::kLong));
    for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
        cache.layers.push_back({at::zeros({batch, capacity, cfg_.kv_lora_rank}, opts),
                                at::zeros({batch, capacity, cfg_.qk_rope_head_dim}, opts),
                                at::zeros({batch, capacity, cfg_.index_head_dim}, opts)});
    }
    return cache;
}

PagedKvCache Model::new_paged_cache(int64_t num_blocks, int64_t block_size) const {
    TORCH_CHECK(num_blocks >= 1 && block_size >= 1, "new_paged_cache: num_blocks and block_size must be >= 1, got ",
                num_blocks, ", ", block_size);
    const auto opts = at::TensorOptions().device(device()).dtype(model_dtype(cfg_));
    PagedKvCache cache;
    cache.block_size = block_size;
    cache.num_blocks = num_blocks;
    const int64_t slots = num_blocks * block_size;
    for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
        cache.layers.push_back({at::zeros({slots, cfg_.kv_lora_rank}, opts),
                                at::zeros({slots, cfg_.qk_rope_head_dim}, opts),
                                at::zeros({slots, cfg_.index_head_dim}, opts)});
    }
    return cache;
}

PagedStep Model::paged_decode_step(PagedKvCache& cache,
                                   const at::Tensor& table,
                                   const at::Tensor& pos,
                                   int64_t keys) const {
    const int64_t bs = cache.block_size;
    TORCH_CHECK(
        table.dim() == 2 && pos.dim() == 1 && pos.size(0) == table.size(0) && keys >= 1 && keys <= table.size(1) * bs,
        "paged_decode_step: table must be [R, NB], pos [R] and 1 <= keys <= NB x block_size; got table ", table.sizes(),
        ", pos ", pos.sizes(), ", keys ", keys, ", block_size ", bs);
    PagedStep step{.cache = &cache};
    if (built_with_cuda() && cfg_.impl != Impl::kReference &&
        cuda::paged_step_inputs_fit(table, pos, bs, keys, rope_.inv_freq)) {
        cuda::PagedStepInputs in =
            cuda::paged_step_inputs(table, pos, bs, keys, rope_.inv_freq, rope_.attention_factor);
        step.write_slots = std::move(in.write);
        step.read_slots = std::move(in.read);
        step.key_valid = std::move(in.key_valid);
        step.cos = std::move(in.cos);
        step.sin = std::move(in.sin);
        return step;
    }
    const at::Tensor key = at::arange(keys, table.options());
    step.read_slots = table.index_select(1, key.div(bs, "floor")) * bs + key.remainder(bs);
    step.write_slots = table.gather(1, pos.div(bs, "floor").unsqueeze(1)) * bs + pos.remainder(bs).unsqueeze(1);
    step.key_valid = key.unsqueeze(0) <= pos.unsqueeze(1);
    std::tie(step.cos, step.sin) = rope_cos_sin(rope_, pos.unsqueeze(1));
    return step;
}

int64_t cache_bytes_per_token(const ModelConfig& cfg) {
    return cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim + cfg.index_head_dim) *
           static_cast<int64_t>(c10::elementSize(model_dtype(cfg)));
}

int64_t Model::cache_bytes_per_token() const { return dsa::cache_bytes_per_token(cfg_); }

int64_t PagedKvCache::block_bytes() const {
    int64_t bytes = 0;
    for (const LayerCache& l : layers) {
        for (const at::Tensor* t : {&l.c_kv, &l.k_pe, &l.index_k}) bytes += t->size(1) * t->element_size();
    }
    return bytes * block_size;
}

void PagedKvCache::copy_slots(int64_t from, int64_t to, int64_t n) {
    for (LayerCache& l : layers) {
        for (at::Tensor* t : {&l.c_kv, &l.k_pe, &l.index_k}) t->narrow(0, to, n).copy_(t->narrow(0, from, n));
    }
}

void KvCache::select_rows(const at::Tensor& rows) {
    const at::Tensor idx = rows.to(key_valid.device(), at::kLong);
    for (LayerCache& l : layers) {
        l.c_kv = l.c_kv.index_select(0, idx);
        l.k_pe = l.k_pe.index_select(0, idx);
        l.index_k = l.index_k.index_select(0, idx);
    }
    key_valid = key_valid.index_select(0, idx);
    next_pos = next_pos.index_select(0, idx);
}

at::Tensor MoeBalance::add_aux_loss(const at::Tensor& loss) {
    if (!aux_loss.defined()) return loss;
    aux_loss_sum += aux_loss.item<double>();
    ++aux_loss_count;
    at::Tensor total = loss + aux_loss.to(loss.device());
    aux_loss = at::Tensor();
    return total;
}

namespace {

// One MoE layer's share of a training forward's MoeBalance: loads of the real tokens and, with α > 0, the
// sequence-wise balance loss averaged over the forward's sequences.
void track_balance(MoeBalance& b, const moe::Route& r, const at::Tensor& mask, int64_t layer, int64_t experts) {
    if (static_cast<int64_t>(b.loads.size()) <= layer) b.loads.resize(static_cast<size_t>(layer) + 1);
    at::Tensor& load = b.loads[static_cast<size_t>(layer)];
    const at::Tensor add = moe::expert_load(r.indices, experts, mask.flatten());
    load = load.defined() ? load + add : add;
    if (b.seq_aux_alpha <= 0 || mask.size(0) == 0) return;
    const int64_t batch = mask.size(0), len = mask.size(1);
    const at::Tensor term =
        moe::sequence_balance_loss(r.scores.view({batch, len, experts}), r.indices.view({batch, len, -1}), mask)
            .mean() *
        b.seq_aux_alpha;
    b.aux_loss = b.aux_loss.defined() ? b.aux_loss + term : term;
}

}  // namespace

at::Tensor Model::logits(const at::Tensor& hidden, const at::Tensor& out) const {
    // dsrl's decode kernel writes the fp32 logits itself (each rounded to the compute type first, as the cast of
    // at::linear's result): one kernel instead of a GEMM and a copy.
    const bool kernel = decode_kernel(hidden, w_.lm_head, cfg_);
    if (!out.defined()) {
        return kernel ? cuda::decode_linear(hidden, w_.lm_head, /*f32=*/true)
                      : at::linear(hidden, w_.lm_head).to(at::kFloat);
    }
    std::vector<int64_t> shape(hidden.sizes().begin(), hidden.sizes().end());
    shape.back() = w_.lm_head.size(0);
    TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.device() == hidden.device() &&
                    out.numel() == c10::multiply_integers(shape),
                "forward: logits_out must be contiguous fp32 with ", c10::multiply_integers(shape), " elements on ",
                hidden.device(), " (logits ", at::IntArrayRef(shape), "), got ", out.scalar_type(), " ", out.sizes(),
                " on ", out.device());
    at::Tensor into = out.view(shape);
    if (kernel) {
        cuda::decode_linear_f32_out(into, hidden, w_.lm_head);
        return into;
    }
    // The GEMM writes fp32 in place where nothing casts; under autocast or with bf16 weights its result is copied in
    // (the copy is the cast .to(kFloat) would have run).
    if (hidden.scalar_type() == at::kFloat && w_.lm_head.scalar_type() == at::kFloat &&
        !at::autocast::is_autocast_enabled(hidden.device().type())) {
        at::linear_out(into, hidden, w_.lm_head);
    } else {
        into.copy_(at::linear(hidden, w_.lm_head));
    }
    return into;
}

ForwardOutput Model::forward(const ForwardInput& in, const ForwardOptions& opt, KvCache* cache) const {
    const ModelConfig& c = cfg_;
    TORCH_CHECK(in.input_ids.dim() == 2, "forward: input_ids must be [B, L], got ", in.input_ids.sizes());
    const at::Tensor ids = in.input_ids.to(device(), at::kLong);
    Step st;
    st.batch = ids.size(0);
    st.len = ids.size(1);
    if (ids.numel() > 0 && opt.check_ids) {
        const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
        if (lo < 0 || hi >= c.vocab_size) {
            throw DataError(absl::StrCat("forward: token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ",
                                         c.vocab_size, ")"));
        }
    }
    const auto long_opts = ids.options();
    const PagedStep* paged = opt.paged;
    const bool paged_read = paged != nullptr && paged->read_slots.defined();  // a decode step through the pool
    // A paged decode step reads neither the mask nor the default query positions (its own come with it).
    const at::Tensor mask = in.attention_mask.defined() ? in.attention_mask.to(device()).ne(0)
                            : paged_read && in.position_ids.defined() && opt.balance == nullptr
                                ? at::Tensor()
                                : at::ones({st.batch, st.len}, long_opts.dtype(at::kBool));
    TORCH_CHECK(!mask.defined() || mask.sizes() == ids.sizes(), "forward: attention_mask must be ", ids.sizes(),
                ", got ", in.attention_mask.sizes());
    if (cache != nullptr) {
        TORCH_CHECK(cache->batch() == st.batch, "forward: the cache holds ", cache->batch(), " sequences, the input ",
                    st.batch);
        TORCH_CHECK(cache->length + st.len <= cache->capacity, "forward: ", cache->length, " cached + ", st.len,
                    " new positions exceed the cache capacity ", cache->capacity);
        st.offset = cache->length;
    }
    const int64_t num_keys = st.offset + st.len;

    // Rotary positions count the real tokens of each sequence.
    at::Tensor pos;
    if (in.position_ids.defined()) {
        TORCH_CHECK(in.position_ids.sizes() == ids.sizes(), "forward: position_ids must be ", ids.sizes(), ", got ",
                    in.position_ids.sizes());
        pos = in.position_ids.to(device(), at::kLong);
    } else {
        pos = at::cumsum(mask.to(at::kLong), 1) - 1;
        if (cache != nullptr) pos = pos + cache->next_pos.unsqueeze(1);
        pos = pos.clamp_min(0);
    }
    if (paged != nullptr && paged->cos.defined()) {  // computed with the step's slots (paged_decode_step)
        const std::vector<int64_t> want = {st.batch, st.len, cfg_.qk_rope_head_dim / 2};
        TORCH_CHECK(paged->cos.sizes() == want && paged->sin.sizes() == want, "forward: paged cos / sin must be ", want,
                    ", got ", paged->cos.sizes(), " / ", paged->sin.sizes());
        st.cos = paged->cos;
        st.sin = paged->sin;
    } else {
        std::tie(st.cos, st.sin) = rope_cos_sin(rope_, pos);
    }
    if (!paged_read) {
        st.query_pos = (at::arange(st.len, long_opts) + st.offset).unsqueeze(0).expand({st.batch, st.len}).contiguous();
    }
    if (paged != nullptr) {
        TORCH_CHECK(cache == nullptr && paged->cache != nullptr, "forward: a paged step takes no KvCache");
        TORCH_CHECK(paged->write_slots.sizes() == ids.sizes(), "forward: paged write_slots must be ", ids.sizes(),
                    ", got ", paged->write_slots.sizes());
        TORCH_CHECK(!opt.return_attention && !opt.return_indexer && !opt.replay_topk,
                    "forward: a paged step returns no attention or indexer inputs and replays no key sets");
    }
    if (paged_read) {
        TORCH_CHECK(in.position_ids.defined() && paged->read_slots.dim() == 2 &&
                        paged->read_slots.size(0) == st.batch && paged->key_valid.sizes() == paged->read_slots.sizes(),
                    "forward: a paged decode needs position_ids and read_slots / key_valid [", st.batch, ", S]");
        st.query_pos = pos;
        st.key_valid = paged->key_valid.to(at::kBool);
        const int64_t keys = paged->read_slots.size(1);
        st.dense = opt.path == AttentionPath::kDense || (opt.path == AttentionPath::kAuto && keys <= c.index_topk);
    } else if (cache != nullptr) {
        cache->key_valid.narrow(1, st.offset, st.len).copy_(mask);
        cache->next_pos = cache->next_pos + mask.to(at::kLong).sum(1);
        st.key_valid = cache->key_valid.narrow(1, 0, num_keys);
    } else {
        st.key_valid = mask;
    }
    if (paged == nullptr || !paged->read_slots.defined()) {
        st.dense = opt.path == AttentionPath::kDense || (opt.path == AttentionPath::kAuto && num_keys <= c.index_topk);
    }

    if (paged_read && st.dense) st.dense_slots = read_slots(paged->read_slots, {}, st, c);

    ForwardOutput out;
    out.query_pos = st.query_pos;
    out.key_valid = st.key_valid;
    const moe::RouterOptions router = router_options(c);
    // The residual stream x and the normalized input of the next sublayer xn: each residual add and the norm after it
    // are one kernel where the forward's kernels run (add_norm); the last add goes with the final norm.
    // Where the kernels run, a layer's input norm also computes its indexer's head weights (iw) and the MoE block's
    // norm its route: one launch each instead of two.
    const moe::ExpertParallel* ep = expert_parallel();
    at::Tensor x = at::embedding(w_.embed_tokens, ids);
    // A MoE layer's output may come as its pair rows (moe::MoeOutput::pairs): summed by the add + norm kernel as it
    // reads them, or by the combine kernel where that kernel does not run.
    auto next_input = [&](const at::Tensor& given, int64_t layer,
                          const PairRows& pairs) {  // x (+ delta), layer's input
        const at::Tensor& w = layer < c.num_hidden_layers ? w_.layers[layer].input_layernorm : w_.norm;
        const bool add = given.defined() || pairs.defined();
        if (layer < c.num_hidden_layers && c.impl != Impl::kReference &&
            runs_indexer(opt, st, cache != nullptr ? &cache->layers[layer] : nullptr)) {
            const at::Tensor& wp = w_.layers[layer].indexer.weights_proj;
            if (wp.defined() && cuda::add_norm_proj_fits(x, given, w, wp, &pairs)) {
                cuda::NormedProjection r =
                    cuda::add_norm_proj(x, given, w, c.rms_norm_eps, wp, indexer_weight_scale(c), &pairs);
                return std::make_tuple(add ? std::move(r.sum) : x, std::move(r.normed), std::move(r.proj));
            }
        }
        if (pairs.defined() && fused(c, x, {&w}) && cuda::add_rms_norm_takes(x, pairs)) {
            auto [sum, normed] = cuda::add_rms_norm(x, pairs, w, c.rms_norm_eps);
            return std::make_tuple(std::move(sum), std::move(normed), at::Tensor());
        }
        const at::Tensor delta = pairs.defined() ? moe::cuda::combine_pairs(pairs).view(x.sizes()) : given;
        if (!delta.defined()) return std::make_tuple(x, norm(x, w, c.rms_norm_eps, c), at::Tensor());
        auto [sum, normed] = add_norm(x, delta, w, c.rms_norm_eps, c);
        return std::make_tuple(std::move(sum), std::move(normed), at::Tensor());
    };
    at::Tensor xn, iw;
    std::tie(x, xn, iw) = next_input({}, 0, {});
    int64_t moe_layer = 0;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const LayerWeights& l = w_.layers[i];
        AttentionResult a = attention(xn, l, c, st, opt, cache != nullptr ? &cache->layers[i] : nullptr, i, iw);
        at::Tensor h;
        std::optional<moe::Route> routed;
        const at::Tensor x2 = x.view({-1, c.hidden_size}), delta2 = a.out.reshape({-1, c.hidden_size});
        if (l.is_moe && opt.replay_routes == nullptr && opt.balance == nullptr &&
            moe::routes_on_kernels(x2, l.moe, router, {}, ep, opt.moe_dense, c.impl) &&
            moe::cuda::add_norm_route_fits(x2, delta2, l.post_attention_layernorm, l.moe.gate, router)) {
            moe::cuda::NormedRoute r = moe::cuda::add_norm_route(x2, delta2, l.post_attention_layernorm, c.rms_norm_eps,
                                                                 l.moe.gate, l.moe.bias, router);
            x = r.sum.view(x.sizes());
            h = std::move(r.normed);
            routed = std::move(r.route);
        } else {
            std::tie(x, h) = add_norm(x, a.out, l.post_attention_layernorm, c.rms_norm_eps, c);
            h = h.view({-1, c.hidden_size});
        }
        if (opt.return_topk) out.topk.push_back(a.topk);
        if (opt.return_indexer) out.indexer.push_back(a.indexer);
        if (opt.return_attention) out.attention.push_back(std::move(a.attention));
        at::Tensor y;
        PairRows pairs;
        if (l.is_moe) {
            at::Tensor replay;
            if (opt.replay_routes != nullptr) {
                TORCH_CHECK(moe_layer < static_cast<int64_t>(opt.replay_routes->size()),
                            "forward: ", opt.replay_routes->size(), " replayed routes for more MoE layers");
                const at::Tensor& r = (*opt.replay_routes)[moe_layer];
                TORCH_CHECK(r.dim() == 3 && r.size(0) == st.batch && r.size(1) == st.len,
                            "forward: replayed route of MoE layer ", moe_layer, " must be [", st.batch, ", ", st.len,
                            ", k], got ", r.sizes());
                replay = r.to(device()).reshape({st.batch * st.len, -1});
            }
            moe::MoeOutput m = moe::moe_forward(h, l.moe, router, replay, ep, opt.moe_dense, c.impl,
                                                routed.has_value() ? &*routed : nullptr, /*defer_sum=*/true);
            y = m.y;
            pairs = std::move(m.pairs);
            if (opt.balance != nullptr) track_balance(*opt.balance, m.route, mask, moe_layer, c.n_routed_experts);
            if (opt.return_routes) out.routes.push_back(m.route.indices.view({st.batch, st.len, -1}));
            ++moe_layer;
        } else {
            y = !at::GradMode::is_enabled() && l.fused_gate_up.defined()
                    ? moe::swiglu_stacked(h, l.fused_gate_up, l.mlp.down_proj, c.impl)
                    : moe::swiglu(h, l.mlp.gate_proj, l.mlp.up_proj, l.mlp.down_proj, c.impl);
        }
        std::tie(x, xn, iw) =
            next_input(y.defined() ? y.view({st.batch, st.len, c.hidden_size}) : at::Tensor(), i + 1, pairs);
    }
    if (cache != nullptr) cache->length = num_keys;
    x = xn;
    if (opt.return_hidden) out.hidden = x;
    if (opt.return_logits) out.logits = logits(x, opt.logits_out);
    return out;
}

}  // namespace dsrl::dsa
