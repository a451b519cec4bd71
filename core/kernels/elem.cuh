// Element types of the kernels that take fp32, bf16 or fp16 operands and compute in fp32 (norm_rope.cu,
// sparse_mla_simt.cu): the enum their parameter structs carry, and the device-side load / round / store.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dsrl::kernels {

enum class Elem { kF32, kBF16, kF16 };

/// Bytes of one element of type t.
constexpr int elem_size(Elem t) { return t == Elem::kF32 ? 4 : 2; }

#ifdef __CUDACC__
__device__ __forceinline__ float load_elem(const void* p, Elem t, int64_t i) {
    switch (t) {
        case Elem::kBF16:
            return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
        case Elem::kF16:
            return __half2float(static_cast<const __half*>(p)[i]);
        default:
            return static_cast<const float*>(p)[i];
    }
}

/// v[u] = element idx(u) of p (type t) for u < N, in fp32: the type's switch around the whole batch, so that the N
/// loads issue back to back (a switch around each load makes each wait for the one before: ptxas does not hoist a load
/// out of a branch).
template <int N, typename Index>
__device__ __forceinline__ void load_elems(const void* p, Elem t, Index idx, float (&v)[N]) {
    switch (t) {
        case Elem::kBF16: {
            const auto* q = static_cast<const __nv_bfloat16*>(p);
#pragma unroll
            for (int u = 0; u < N; ++u) v[u] = __bfloat162float(q[idx(u)]);
            break;
        }
        case Elem::kF16: {
            const auto* q = static_cast<const __half*>(p);
#pragma unroll
            for (int u = 0; u < N; ++u) v[u] = __half2float(q[idx(u)]);
            break;
        }
        default: {
            const auto* q = static_cast<const float*>(p);
#pragma unroll
            for (int u = 0; u < N; ++u) v[u] = q[idx(u)];
        }
    }
}

/// v rounded to type t, back in fp32 (what an op of that type would have stored).
__device__ __forceinline__ float round_elem(float v, Elem t) {
    switch (t) {
        case Elem::kBF16:
            return __bfloat162float(__float2bfloat16_rn(v));
        case Elem::kF16:
            return __half2float(__float2half_rn(v));
        default:
            return v;
    }
}

__device__ __forceinline__ void store_elem(void* p, Elem t, int64_t i, float v) {
    switch (t) {
        case Elem::kBF16:
            static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
            break;
        case Elem::kF16:
            static_cast<__half*>(p)[i] = __float2half_rn(v);
            break;
        default:
            static_cast<float*>(p)[i] = v;
    }
}
#endif

}  // namespace dsrl::kernels
