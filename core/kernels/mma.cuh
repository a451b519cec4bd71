// The PTX wrappers of dsrl's tensor-core kernels (sm_80+): cp.async staging into shared memory, ldmatrix fragments,
// mma.sync m16n8k16 with fp32 accumulators for bf16 and fp16 operands, and the XOR swizzle of 16-byte chunks that
// keeps ldmatrix's eight row addresses on distinct banks without padding. Device code only; include from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace dsrl::kernels {

/// Byte offset of element (row, col) of a 2-byte tile of `chunks` 16-byte chunks per row, the chunk index XORed
/// with the row's low three bits.
__device__ __forceinline__ uint32_t swz(int row, int col, int chunks) {
    return uint32_t((row * chunks + ((col >> 3) ^ (row & 7))) * 16 + (col & 7) * 2);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// 16 bytes global -> shared, bypassing L1; `valid` false zero-fills the destination and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
/// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// The cp.async ring of a K loop over `chunks` chunks in kStages shared-memory stages: kStages − 1 chunks staged ahead
/// (stage(chunk, stage index), each chunk's copies one commit group); at chunk kc every thread waits for it, the block
/// syncs (chunk kc − 1's stage is free again), stages chunk kc + kStages − 1 and runs compute(kc's stage index).
/// Groups committed before the call (weights staged ahead of a PDL wait) have landed by the first compute. Nothing is
/// left in flight at the end (the tail groups are empty). Every thread of the block calls it.
template <int kStages, typename Stage, typename Compute>
__device__ __forceinline__ void cp_async_pipeline(int chunks, const Stage& stage, const Compute& compute) {
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < chunks) stage(s, s);
        cp_async_commit();
    }
    for (int kc = 0; kc < chunks; ++kc) {
        cp_async_wait<kStages - 2>();
        __syncthreads();
        if (kc + kStages - 1 < chunks) stage(kc + kStages - 1, (kc + kStages - 1) % kStages);
        cp_async_commit();
        compute(kc % kStages);
    }
    cp_async_wait<0>();
}

/// A lane's ldmatrix address in a staged tile (rows of 8 swizzled 16-byte chunks, swz) at k16 step kk: of the A
/// fragment (the 16 rows from row0) and of the B fragments of two n8 tiles (the 16 weight rows from row0).
__device__ __forceinline__ uint32_t frag_a_addr(uint32_t tile, int row0, int kk, int lane) {
    return tile + swz(row0 + (lane & 15), kk * 16 + (lane >> 4) * 8, 8);
}
__device__ __forceinline__ uint32_t frag_b_addr(uint32_t tile, int row0, int kk, int lane) {
    return tile + swz(row0 + ((lane >> 4) << 3) + (lane & 7), kk * 16 + ((lane >> 3) & 1) * 8, 8);
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/// c += a · b for one m16n8k16 tile, bf16 operands.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// c += a · b for one m16n8k16 tile of operand type T (__nv_bfloat16 or __half).
template <typename T>
__device__ __forceinline__ void mma16816_t(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<T, __half>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        mma16816(c, a, b0, b1);
    }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

/// v rounded to operand type T.
template <typename T>
__device__ __forceinline__ T to_operand(float v) {
    if constexpr (std::is_same_v<T, __half>) {
        return __float2half_rn(v);
    } else {
        return __float2bfloat16_rn(v);
    }
}

template <typename T>
__device__ __forceinline__ float from_operand(T v) {
    if constexpr (std::is_same_v<T, __half>) {
        return __half2float(v);
    } else {
        return __bfloat162float(v);
    }
}

}  // namespace dsrl::kernels
