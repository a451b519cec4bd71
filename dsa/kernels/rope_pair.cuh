// One RoPE pair rotated as dsa/rope.cpp's ATen formulas round it in the rotated tensor's type — shared by the rope
// kernel, the norm kernel's rotated keys, the sparse attention's and the indexer's rotated queries, so each gives the
// bits the rope kernel gives. Device code only.
#pragma once

#include "core/kernels/elem.cuh"

namespace dsrl::dsa::kernels {

/// The rotated part's pair that dim d (< rope) belongs to: pair j of the interleaved form is dims (2j, 2j + 1), of the
/// half split (j, j + rope / 2). Sets a / b to the pair's dims and returns j.
__device__ __forceinline__ int rope_pair_of(int d, int rope, bool interleaved, int& a, int& b) {
    const int half = rope / 2;
    const int j = interleaved ? d / 2 : (d < half ? d : d - half);
    a = interleaved ? 2 * j : j;
    b = interleaved ? 2 * j + 1 : j + half;
    return j;
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

}  // namespace dsrl::dsa::kernels
