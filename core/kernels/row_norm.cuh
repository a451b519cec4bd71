// A row's RMSNorm, optionally after the residual add, by the warps of a tile kernel's row group — the staging step of
// the kernels that fold a decode step's add + norm into the launch that consumes its output (the router, the
// indexer's head weights): the norm's output row lands in shared memory in fp32 for their dot products
// (core/kernels/row_dot.cuh block_tile_dots) and, when asked, in global memory as the norm kernel writes it.
//
// Bit for bit dsa/kernels/norm_rope.cu's norm_kernel (a 256-thread block per row): the group's warps keep the partial
// sums of squares of the block threads they stand for (each summed over its elements in the block's order), sum them
// across their lanes with the block's butterfly, and the eight warp sums meet in the block's order. So a fused
// launch's normalized rows equal the plain norm kernel's — the rollout's tokens do not depend on which launch
// normalized them. Sees no torch types.
#pragma once

#include <cstdint>

#include "core/kernels/elem.cuh"
#include "core/kernels/pair_sum.cuh"
#include "core/kernels/row_dot.cuh"

namespace dsrl::kernels {

/// The threads of the block whose order of the sum of squares the warp reproduces (norm_rope.cu kNormThreads).
constexpr int kNormOrderThreads = 256;

/// Column of lane `lane`'s element e in warp q of a row group of kGroup warps: e = P · k + j is element 256 k + 32 (q P
/// + j) + lane (block warp q P + j, its k-th), P = 8 / kGroup — the norm kernel's block order.
template <int kGroup>
__host__ __device__ constexpr int norm_order_col(int e, int q, int lane) {
    constexpr int P = kNormOrderThreads / 32 / kGroup;
    return kNormOrderThreads * (e / P) + 32 * (q * P + e % P) + lane;
}

/// out[r, :] = w · cast_x(s_r · rsqrt(mean(s_r²) + eps)) with s_r = x_r (+ residual_r, rounded to x's type), as the
/// norm kernel's RmsNormParams with a residual; the product rounded to out_type.
struct AddNormRows {
    const void* x = nullptr;  // rows of `dim` at x_row_stride
    Elem x_type = Elem::kF32;
    int64_t x_row_stride = 0;
    const void* residual = nullptr;  // optional; rows like x's, x's type or one that promotes to it
    Elem residual_type = Elem::kF32;
    int64_t residual_row_stride = 0;
    PairSum residual_pairs{};  // or (out set) the residual as the routed experts' pair rows, summed as read
    void* sum_out = nullptr;   // [rows, dim] contiguous, x's type: the sum (with a residual)
    const void* w = nullptr;   // [dim]
    Elem w_type = Elem::kF32;
    float eps = 0.f;
    void* out = nullptr;  // [rows, dim] contiguous of out_type, or null (the row only in shared memory)
    Elem out_type = Elem::kF32;
};

#ifdef __CUDACC__
/// The kGroup warps of a row group (warp q of them the caller) normalize row `row` of p (dim elements): xs[i] (shared
/// fp32, dim elements) ends as output element i as stored in out_type; with `store`, the sum's and the output's rows
/// are written too. Warp q keeps the partials of the block's warps q · P .. q · P + P − 1 (P = 8 / kGroup), sums each
/// across its lanes, and the row's eight warp sums meet in `red` (shared, 8 floats per row group) in the block's
/// order. Contains a __syncthreads(): every warp of the block calls it at once (each for its own row group). kPairs:
/// the residual may be p.residual_pairs (a separate instantiation: the pair sum's loads take registers). `w_first`:
/// the lane's first eight weights (norm_weights_first), loaded by the caller before it waited for the kernel before.
template <int kGroup, bool kPairs = false>
__device__ __forceinline__ void group_add_rms_norm(const AddNormRows& p,
                                                   int64_t row,
                                                   int dim,
                                                   float* xs,
                                                   float* red,
                                                   bool store,
                                                   int q,
                                                   int lane,
                                                   const float (&w_first)[8]) {
    constexpr int kWarps = kNormOrderThreads / 32;
    constexpr int P = kWarps / kGroup;  // the block's warps whose partials this warp keeps
    static_assert(kWarps % kGroup == 0, "the row's warps split the block's");
    const bool pairs = kPairs && p.residual_pairs.out != nullptr, add = p.residual != nullptr || pairs;
    const int64_t base = row * p.x_row_stride;
    if constexpr (kPairs) {
        // The pairs' sum first, into xs (16-byte loads of eight columns; the row's elements below are a lane's in the
        // block's order, not consecutive); every warp of the block reaches the barrier (the parameters are the
        // block's).
        if (pairs) {
            stage_pair_sum(p.residual_pairs, row, dim, xs, q * 32 + lane, kGroup * 32);
            __syncthreads();
        }
    }
    // The lane's elements in order (norm_order_col). A batch of 8 covers 8 / P whole k, so element e of a batch keeps
    // partial e mod P.
    const int rounds = (dim + kNormOrderThreads - 1) / kNormOrderThreads;
    const int elems = rounds * P;
    const auto col = [&](int e) { return norm_order_col<kGroup>(e, q, lane); };
    float part[P];
#pragma unroll
    for (int j = 0; j < P; ++j) part[j] = 0.f;
    for (int e0 = 0; e0 < elems; e0 += 8) {
        // Every load issued before the first use (indices clamped, the type's switch around the batch).
        float v[8], r[8] = {};
        load_elems(
            p.x, p.x_type, [&](int u) { return base + min(col(e0 + u), dim - 1); }, v);
        if (pairs) {
#pragma unroll
            for (int u = 0; u < 8; ++u) {  // staged above; only the lane's own elements (others write theirs)
                if (e0 + u < elems && col(e0 + u) < dim) r[u] = xs[col(e0 + u)];
            }
        } else if (add) {
            load_elems(
                p.residual, p.residual_type,
                [&](int u) { return row * p.residual_row_stride + min(col(e0 + u), dim - 1); }, r);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const int i = col(e0 + u);
            if (e0 + u >= elems || i >= dim) continue;
            float s = v[u];
            if (add) {  // x + residual in x's type (ATen's add)
                s = round_elem(__fadd_rn(s, r[u]), p.x_type);
                if (store) store_elem(p.sum_out, p.x_type, row * dim + i, s);
            }
            xs[i] = s;
            part[u % P] = __fadd_rn(part[u % P], __fmul_rn(s, s));
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
#pragma unroll
        for (int j = 0; j < P; ++j) part[j] = __fadd_rn(part[j], __shfl_xor_sync(0xffffffffu, part[j], off));
    }
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < P; ++j) red[q * P + j] = part[j];
    }
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total = __fadd_rn(total, red[w]);
    // As ATen: mean = sum · (1 / dim) in fp32, + eps, rsqrt.
    const float scale = rsqrtf(__fadd_rn(__fmul_rn(total, 1.0f / static_cast<float>(dim)), p.eps));
    // The lane's own elements of xs (no sync), eight at a time with their weights loaded before the first store: a
    // load after a store to global memory cannot be hoisted over it (they might alias).
    for (int e0 = 0; e0 < elems; e0 += 8) {
        float w8[8];
        if (e0 == 0) {
#pragma unroll
            for (int u = 0; u < 8; ++u) w8[u] = w_first[u];
        } else {
            load_elems(
                p.w, p.w_type, [&](int u) { return min(col(e0 + u), dim - 1); }, w8);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const int i = col(e0 + u);
            if (e0 + u >= elems || i >= dim) continue;
            const float normed = round_elem(__fmul_rn(xs[i], scale), p.x_type);  // .to(x's type)
            const float o = round_elem(__fmul_rn(w8[u], normed), p.out_type);
            xs[i] = o;
            if (store && p.out != nullptr) store_elem(p.out, p.out_type, row * dim + i, o);
        }
    }
}

/// The first eight weights group_add_rms_norm<kGroup> multiplies warp q's lane by (its elements' order), loaded
/// into w8 — before the kernel waits for the one before it: no kernel of a step writes a norm's weights, so the
/// norm's last pass does not wait on memory after its barrier (a row of up to 256 · 8 / P elements, all of them).
template <int kGroup>
__device__ __forceinline__ void norm_weights_first(const AddNormRows& p, int dim, int q, int lane, float (&w8)[8]) {
    load_elems(
        p.w, p.w_type, [&](int u) { return min(norm_order_col<kGroup>(u, q, lane), dim - 1); }, w8);
}

/// A tile kernel's staging of its row group's row into xs_all + g · dim (shared fp32, the block's rows one after the
/// other): the add + norm of `add_norm` when its weight is set (group_add_rms_norm, writing its rows for a real row;
/// `red_all` 8 shared floats per row group), else the row of x (type t, x_row_stride elements apart) as is. Every warp
/// of the block calls it at once (the norm contains a __syncthreads()); the caller syncs the block after it. It waits
/// for the kernel before (pdl_enter) itself, after loading the norm's first weights: the caller must not read what
/// that kernel writes before it.
template <int kRows, bool kPairs = false>
__device__ __forceinline__ void stage_tile_row(const TileRow<kRows>& tile,
                                               const AddNormRows& add_norm,
                                               const void* x,
                                               Elem t,
                                               int64_t x_row_stride,
                                               int dim,
                                               float* xs_all,
                                               float* red_all) {
    float* const xs = xs_all + tile.g * dim;
    if (add_norm.w != nullptr) {
        float w_first[8];
        norm_weights_first<TileRow<kRows>::kGroup>(add_norm, dim, tile.q, tile.lane, w_first);
        pdl_enter();
        group_add_rms_norm<TileRow<kRows>::kGroup, kPairs>(add_norm, tile.row, dim, xs, red_all + tile.g * 8, tile.real,
                                                           tile.q, tile.lane, w_first);
    } else {
        pdl_enter();
        stage_row(xs, static_cast<const unsigned char*>(x) + tile.row * x_row_stride * elem_size(t), t, dim,
                  tile.q * 32 + tile.lane, TileRow<kRows>::kGroup * 32);
    }
}
#endif

}  // namespace dsrl::kernels
