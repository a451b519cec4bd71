// One RoPE pair rotated as dsa/rope.cpp's ATen formulas round it in the rotated tensor's type — shared by the rope
// kernel, the norm kernel's rotated keys, the sparse attention's and the indexer's rotated queries, so each gives the
// bits the rope kernel gives. Device code only.
#pragma once

#include "core/kernels/elem.cuh"

namespace dsrl::dsa::kernels {

/// The dims of pair j of a rotated part of `rope` dims: (2j, 2j + 1) interleaved, (j, j + rope / 2) half split.
__device__ __forceinline__ void rope_pair_dims(int j, int rope, bool interleaved, int& a, int& b) {
    a = interleaved ? 2 * j : j;
    b = interleaved ? 2 * j + 1 : j + rope / 2;
}

/// (a, b) rotated by the angle of (cos, sin): cos and sin cast to type t first (cos.to(x.dtype)), then a' = a·c − b·s
/// and b' = b·c + a·s, each product and each difference / sum rounded to t. a and b hold values of type t.
__device__ __forceinline__ void rope_rotate(float& a, float& b, float cos, float sin, dsrl::kernels::Elem t) {
    using dsrl::kernels::round_elem;
    const float c = round_elem(cos, t), s = round_elem(sin, t);
    const float ac = round_elem(__fmul_rn(a, c), t), bs = round_elem(__fmul_rn(b, s), t);
    const float bc = round_elem(__fmul_rn(b, c), t), as = round_elem(__fmul_rn(a, s), t);
    a = round_elem(__fsub_rn(ac, bs), t);
    b = round_elem(__fadd_rn(bc, as), t);
}

/// Item k of a row as the rope kernel writes it: pair k of the first `rope` dims rotated (k < rope / 2; cos / sin the
/// row's), else dim rope + (k − rope / 2) as it is. Reads x at in + dim (type t) and hands each (dim, value) to store.
template <typename Store>
__device__ __forceinline__ void rope_row_item(const void* x,
                                              dsrl::kernels::Elem t,
                                              int64_t in,
                                              int64_t k,
                                              int rope,
                                              bool interleaved,
                                              const float* cos,
                                              const float* sin,
                                              Store store) {
    using dsrl::kernels::load_elem;
    const int half = rope / 2;
    if (k >= half) {
        const int64_t d = rope + (k - half);
        store(d, load_elem(x, t, in + d));
        return;
    }
    int a_idx = 0, b_idx = 0;
    rope_pair_dims(static_cast<int>(k), rope, interleaved, a_idx, b_idx);
    float a = load_elem(x, t, in + a_idx), b = load_elem(x, t, in + b_idx);
    rope_rotate(a, b, cos[k], sin[k], t);
    store(a_idx, a);
    store(b_idx, b);
}

}  // namespace dsrl::dsa::kernels
