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
