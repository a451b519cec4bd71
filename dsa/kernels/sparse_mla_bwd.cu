// Sparse MLA backward kernels (sparse_mla.cuh): dQ and dKV (float4 atomics on sm_90) and δ = Σ dO·O; layouts
// and helpers in sparse_mla_common.cuh.
#include "dsa/kernels/sparse_mla_common.cuh"

namespace dsrl::kernels {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------------
constexpr int kDqCols = kDimQK / 2;  // 288 dQ columns per warp
constexpr int kDkvChunk = 48;        // dKV columns per register pass (3 ldmatrix pairs)

// Adds an m16n8 accumulator fragment c (rows: entries key_lo / key_hi, −1 = skip; columns col8 + 2 (lane mod 4)
// and + 1) to the fp32 [S, 576] rows of grad_kv. sm_90: float4 atomics — lane pairs swap halves so that the even
// lane holds 4 adjacent columns of row lo and the odd lane 4 of row hi, half the operations of float2.
__device__ __forceinline__ void add_fragment_atomic(
    float* grad_kv, int32_t key_lo, int32_t key_hi, int col8, const float (&c)[4], int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const bool odd = lane & 1;
    const int32_t key = odd ? key_hi : key_lo;
    const float s0 = odd ? c[0] : c[2], s1 = odd ? c[1] : c[3];
    const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
    const float4 v = odd ? make_float4(r0, r1, c[2], c[3]) : make_float4(c[0], c[1], r0, r1);
    if (key >= 0)
        atomicAdd(reinterpret_cast<float4*>(grad_kv + int64_t(key) * kDimQK + col8 + 4 * ((lane & 3) >> 1)), v);
#else
    const int col = col8 + 2 * (lane & 3);  // vector float atomics need sm_90
    for (int i = 0; i < 2; ++i) {
        if (key_lo >= 0) atomicAdd(grad_kv + int64_t(key_lo) * kDimQK + col + i, c[i]);
        if (key_hi >= 0) atomicAdd(grad_kv + int64_t(key_hi) * kDimQK + col + i, c[2 + i]);
    }
#endif
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_bwd_kernel(const SparseMlaBwdParams p) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rg = warp & 3, kh = warp >> 2;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);

    const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
    const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
    float* grad_kv = p.grad_kv + b * p.num_keys * kDimQK;
    const int32_t* idx_row = p.indices + bt * p.topk;
    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kBwdOffIdx);
    float* lse_s = reinterpret_cast<float*>(smem + kBwdOffLse);
    float* delta_s = reinterpret_cast<float*>(smem + kBwdOffDelta);
    const uint32_t q_tile = smem_addr(smem), do_tile = smem_addr(smem + kBwdOffDO);
    const uint32_t k_tile = smem_addr(smem + kBwdOffK);
    const uint32_t p_tile = smem_addr(smem + kBwdOffP), ds_tile = smem_addr(smem + kBwdOffDS);

    stage_rows(q_tile, static_cast<const __nv_bfloat16*>(p.q_lat), static_cast<const __nv_bfloat16*>(p.q_pe),
               [&](int r) -> int64_t { return h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1; });
    {
        const auto* grad_out = static_cast<const __nv_bfloat16*>(p.grad_out);
        for (int i = tid; i < kBlockH * kChunksV; i += kThreads) {
            const int r = i / kChunksV, c = i % kChunksV;
            const bool ok = h0 + r < p.num_heads;
            const __nv_bfloat16* src = ok ? grad_out + (bt * p.num_heads + h0 + r) * kMlaLatentDim + c * 8 : grad_out;
            cp_async16(do_tile + swz(r, c * 8, kChunksV), src, ok);
        }
    }
    if (tid < kBlockH) {
        const bool ok = h0 + tid < p.num_heads;
        const int64_t row = bt * p.num_heads + h0 + tid;
        // lse in the log2 domain; a padded or empty row (−inf) gets +inf so that every P is exp2(−inf) = 0.
        const float lse = ok ? p.lse[row] : -INFINITY;
        lse_s[tid] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        delta_s[tid] = ok ? p.delta[row] : 0.f;
    }

    const float scale_log2 = p.scale * kLog2e;
    float acc_dq[kDqCols / 8][4];
#pragma unroll
    for (int i = 0; i < kDqCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
    const int a_row = rg * 16 + (lane & 15);
    const int a_col = (lane >> 4) << 3;
    const int b_row_s = kh * 32 + (lane & 7) + ((lane >> 4) << 3);
    const int b_col_s = ((lane >> 3) & 1) << 3;
    const int r0 = rg * 16 + (lane >> 2);
    const int t_row = (lane & 7) + (((lane >> 3) & 1) << 3);  // row of an x4.trans load over a 16 × 16 block
    const int t_col = (lane >> 4) << 3;
    const int at_row = (lane & 7) + ((lane >> 4) << 3);  // transposed-A load: stored row (head)
    const int at_col = ((lane >> 3) & 1) << 3;           // stored column (entry) offset

    for (int tile = 0; tile < num_tiles; ++tile) {
        const int64_t base = int64_t(tile) * kBlockK;
        const int32_t my_idx = tid < kBlockK && base + tid < p.topk ? __ldg(idx_row + base + tid) : -1;
        if (!__syncthreads_or(my_idx >= 0)) continue;  // nothing valid in this tile (−1 padding)
        if (tid < kBlockK) idx_s[tid] = my_idx;
        stage_rows(k_tile, c_kv, k_pe, [&](int r) -> int64_t {
            const int64_t slot = base + r;
            return slot < p.topk ? int64_t(__ldg(idx_row + slot)) : -1;
        });
        cp_async_commit();
        cp_async_wait_all();
        __syncthreads();

        // S = Q·Kᵀ and dP = dO·Vᵀ (V = the first 512 columns of K): 16 rows × 32 entries per warp.
        float acc_s[4][4], acc_dp[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
            acc_dp[i][0] = acc_dp[i][1] = acc_dp[i][2] = acc_dp[i][3] = 0.f;
        }
#pragma unroll 2
        for (int kk = 0; kk < kDimQK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, q_tile + swz(a_row, kk * 16 + a_col, kChunksQK));
            uint32_t bf[2][4];
            ldsm_x4(bf[0], k_tile + swz(b_row_s, kk * 16 + b_col_s, kChunksQK));
            ldsm_x4(bf[1], k_tile + swz(b_row_s + 16, kk * 16 + b_col_s, kChunksQK));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                mma16816(acc_s[2 * np], a, bf[np][0], bf[np][1]);
                mma16816(acc_s[2 * np + 1], a, bf[np][2], bf[np][3]);
            }
            if (kk < kMlaLatentDim / 16) {
                uint32_t g[4];
                ldsm_x4(g, do_tile + swz(a_row, kk * 16 + a_col, kChunksV));
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    mma16816(acc_dp[2 * np], g, bf[np][0], bf[np][1]);
                    mma16816(acc_dp[2 * np + 1], g, bf[np][2], bf[np][3]);
                }
            }
        }
        // P = exp2(S·scale·log2e − lse·log2e); dS = P ∘ (dP − δ) · scale; both to shared memory (bf16).
        const float lse_r[2] = {lse_s[r0], lse_s[r0 + 8]};
        const float delta_r[2] = {delta_s[r0], delta_s[r0 + 8]};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            const int col = kh * 32 + nt * 8 + 2 * (lane & 3);
            float pv[4], dsv[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool valid = idx_s[col + (e & 1)] >= 0;
                pv[e] = valid ? exp2f(acc_s[nt][e] * scale_log2 - lse_r[e >> 1]) : 0.f;
                dsv[e] = pv[e] * (acc_dp[nt][e] - delta_r[e >> 1]) * p.scale;
            }
            st_shared_u32(p_tile + swz(r0, col, kChunksP), pack_bf16(pv[0], pv[1]));
            st_shared_u32(p_tile + swz(r0 + 8, col, kChunksP), pack_bf16(pv[2], pv[3]));
            st_shared_u32(ds_tile + swz(r0, col, kChunksP), pack_bf16(dsv[0], dsv[1]));
            st_shared_u32(ds_tile + swz(r0 + 8, col, kChunksP), pack_bf16(dsv[2], dsv[3]));
        }
        __syncthreads();

        // dQ += dS · K: 16 rows × 288 columns per warp.
#pragma unroll
        for (int kk = 0; kk < kBlockK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, ds_tile + swz(a_row, kk * 16 + a_col, kChunksP));
#pragma unroll
            for (int np = 0; np < kDqCols / 16; ++np) {
                uint32_t bf[4];
                ldsm_x4_t(bf, k_tile + swz(kk * 16 + t_row, kh * kDqCols + np * 16 + t_col, kChunksQK));
                mma16816(acc_dq[2 * np], a, bf[0], bf[1]);
                mma16816(acc_dq[2 * np + 1], a, bf[2], bf[3]);
            }
        }

        // dKV = dSᵀ·Q (+ Pᵀ·dO on the 512 latent columns): 16 entries × 288 columns per warp, in chunks of 48.
        const int e0 = rg * 16;  // this warp's entries
        const int32_t key_lo = idx_s[e0 + (lane >> 2)], key_hi = idx_s[e0 + (lane >> 2) + 8];
#pragma unroll 1
        for (int chunk = 0; chunk < kDqCols / kDkvChunk; ++chunk) {
            const int c0 = kh * kDqCols + chunk * kDkvChunk;
            float acc[kDkvChunk / 8][4];
#pragma unroll
            for (int i = 0; i < kDkvChunk / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < kBlockH / 16; ++kk) {
                uint32_t a_ds[4], a_p[4];
                ldsm_x4_t(a_ds, ds_tile + swz(kk * 16 + at_row, e0 + at_col, kChunksP));
                ldsm_x4_t(a_p, p_tile + swz(kk * 16 + at_row, e0 + at_col, kChunksP));
#pragma unroll
                for (int np = 0; np < kDkvChunk / 16; ++np) {
                    const int col = c0 + np * 16;
                    uint32_t bf[4];
                    ldsm_x4_t(bf, q_tile + swz(kk * 16 + t_row, col + t_col, kChunksQK));
                    mma16816(acc[2 * np], a_ds, bf[0], bf[1]);
                    mma16816(acc[2 * np + 1], a_ds, bf[2], bf[3]);
                    if (col < kMlaLatentDim) {
                        ldsm_x4_t(bf, do_tile + swz(kk * 16 + t_row, col + t_col, kChunksV));
                        mma16816(acc[2 * np], a_p, bf[0], bf[1]);
                        mma16816(acc[2 * np + 1], a_p, bf[2], bf[3]);
                    }
                }
            }
#pragma unroll
            for (int nt = 0; nt < kDkvChunk / 8; ++nt) {
                add_fragment_atomic(grad_kv, key_lo, key_hi, c0 + nt * 8, acc[nt], lane);
            }
        }
        __syncthreads();  // K, P and dS are rewritten by the next tile
    }

    // dQ out: columns [0, 512) → grad_q_lat, [512, 576) → grad_q_pe.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int64_t h = h0 + r0 + 8 * i;
        if (h >= p.num_heads) continue;
        const int64_t row = bt * p.num_heads + h;
        auto* dq_lat = static_cast<__nv_bfloat16*>(p.grad_q_lat) + row * kMlaLatentDim;
        auto* dq_pe = static_cast<__nv_bfloat16*>(p.grad_q_pe) + row * kMlaRopeDim;
#pragma unroll
        for (int nt = 0; nt < kDqCols / 8; ++nt) {
            const int col = kh * kDqCols + nt * 8 + 2 * (lane & 3);
            const __nv_bfloat162 v = __floats2bfloat162_rn(acc_dq[nt][2 * i], acc_dq[nt][2 * i + 1]);
            if (col < kMlaLatentDim) {
                *reinterpret_cast<__nv_bfloat162*>(dq_lat + col) = v;
            } else {
                *reinterpret_cast<__nv_bfloat162*>(dq_pe + (col - kMlaLatentDim)) = v;
            }
        }
    }
}

// δ[row] = Σ_c grad_out[row, c] · out[row, c] over the 512 latent columns: one warp per row, 16 columns per lane.
__global__ void __launch_bounds__(256)
    sparse_mla_delta_kernel(const __nv_bfloat16* grad_out, const __nv_bfloat16* out, float* delta, int64_t rows) {
    const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float acc = 0.f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t off = row * kMlaLatentDim + half * 256 + lane * 8;
        const uint4 g = *reinterpret_cast<const uint4*>(grad_out + off);
        const uint4 o = *reinterpret_cast<const uint4*>(out + off);
        const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
        const auto* o2 = reinterpret_cast<const __nv_bfloat162*>(&o);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 a = __bfloat1622float2(g2[i]), b = __bfloat1622float2(o2[i]);
            acc += a.x * b.x + a.y * b.y;
        }
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) delta[row] = acc;
}

}  // namespace

cudaError_t launch_sparse_mla_delta(
    const void* grad_out, const void* out, float* delta, int64_t rows, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    sparse_mla_delta_kernel<<<unsigned((rows + 7) / 8), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(grad_out), static_cast<const __nv_bfloat16*>(out), delta, rows);
    return cudaGetLastError();
}

cudaError_t launch_sparse_mla_bwd(const SparseMlaBwdParams& p, cudaStream_t stream) {
    const int64_t blocks = p.batch * p.num_queries * ((p.num_heads + kBlockH - 1) / kBlockH);
    if (blocks == 0) return cudaSuccess;
    cudaError_t err =
        cudaFuncSetAttribute(sparse_mla_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBwdSmem);
    if (err != cudaSuccess) return err;
    sparse_mla_bwd_kernel<<<unsigned(blocks), kThreads, kBwdSmem, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace dsrl::kernels
