// Sparse MLA forward kernels (sparse_mla.cuh): the mma.sync kernel (the baseline, and sm_80), the
// warp-specialized wgmma kernel (sm_90a) and the split-KV combine; layouts and helpers in sparse_mla_common.cuh.
#include "dsa/kernels/sparse_mla_common.cuh"

namespace dsrl::kernels {
namespace {

template <bool kSplit>
__global__ void __launch_bounds__(kThreads, 1) sparse_mla_fwd_kernel(const SparseMlaFwdParams p) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rg = warp & 3, kh = warp >> 2;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;  // b · T + t
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int split = kSplit ? int(blockIdx.y) : 0;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);
    const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
    const int t_begin = min(num_tiles, split * per_split);
    const int t_end = min(num_tiles, t_begin + per_split);

    const auto* q_lat = static_cast<const __nv_bfloat16*>(p.q_lat);
    const auto* q_pe = static_cast<const __nv_bfloat16*>(p.q_pe);
    const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
    const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
    const int32_t* idx_row = p.indices + bt * p.topk;
    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kFwdOffIdx);
    float* red_max = reinterpret_cast<float*>(smem + kFwdOffMax);
    float* red_sum = reinterpret_cast<float*>(smem + kFwdOffSum);
    const uint32_t q_tile = smem_addr(smem), p_tile = smem_addr(smem + kFwdOffP);
    const uint32_t k_tile0 = smem_addr(smem + kFwdOffK0), k_tile1 = smem_addr(smem + kFwdOffK1);

    // Q rows (zero rows past the last head).
    stage_rows(q_tile, q_lat, q_pe,
               [&](int r) -> int64_t { return h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1; });
    auto load_tile = [&](int tile, int buf) {
        const int64_t base = int64_t(tile) * kBlockK;
        stage_rows(buf ? k_tile1 : k_tile0, c_kv, k_pe, [&](int r) -> int64_t {
            const int64_t slot = base + r;
            return slot < p.topk ? int64_t(__ldg(idx_row + slot)) : -1;
        });
        if (tid < kBlockK) {
            const int64_t slot = base + tid;
            idx_s[buf * kBlockK + tid] = slot < p.topk ? __ldg(idx_row + slot) : -1;
        }
    };
    if (t_begin < t_end) load_tile(t_begin, 0);
    cp_async_commit();

    const float scale_log2 = p.scale * kLog2e;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};
    float acc_o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc_o[i] = 0.f;

    const int a_row = rg * 16 + (lane & 15);                        // ldmatrix row of the A operand
    const int b_row_s = kh * 32 + (lane & 7) + ((lane >> 4) << 3);  // entry row of the B operand in S
    const int b_col_s = ((lane >> 3) & 1) << 3;
    const int r0 = rg * 16 + (lane >> 2);  // accumulator rows r0, r0 + 8

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int buf = (tile - t_begin) & 1;
        cp_async_wait_all();
        // A barrier that also says whether the tile holds any valid entry (top-k rows end in −1 padding).
        const bool any_valid = __syncthreads_or(tid < kBlockK && idx_s[buf * kBlockK + tid] >= 0);
        if (tile + 1 < t_end) load_tile(tile + 1, buf ^ 1);
        cp_async_commit();
        if (!any_valid) continue;
        const uint32_t k_tile = buf ? k_tile1 : k_tile0;

        // S = Q · Kᵀ over 576 dims: 16 rows × 32 entries per warp.
        float acc_s[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) acc_s[i] = 0.f;
#pragma unroll 4
        for (int kk = 0; kk < kDimQK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, q_tile + swz(a_row, kk * 16 + ((lane >> 4) << 3), kChunksQK));
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                uint32_t bf[4];
                ldsm_x4(bf, k_tile + swz(b_row_s + np * 16, kk * 16 + b_col_s, kChunksQK));
                mma16816(frag4(acc_s, 2 * np), a, bf[0], bf[1]);
                mma16816(frag4(acc_s, 2 * np + 1), a, bf[2], bf[3]);
            }
        }

        // Online softmax: row maxima across the row group's two warps, P (bf16) to shared memory.
        float alpha[2];
        online_softmax_tile(
            acc_s, idx_s + buf * kBlockK, kh, lane, r0, scale_log2, red_max, m_run, l_run, alpha,
            [&] { named_barrier(1 + rg, 64); },
            [&](int row, int col, uint32_t v) { st_shared_u32(p_tile + swz(row, col, kChunksP), v); });
        rescale_rows(acc_o, alpha);
        named_barrier(1 + rg, 64);  // the row group's P (both entry halves) is in shared memory

        // O += P · V over the tile's 64 entries: 16 rows × 256 latent columns per warp.
#pragma unroll
        for (int kk = 0; kk < kBlockK / 16; ++kk) {
            uint32_t a[4];
            ldsm_x4(a, p_tile + swz(a_row, kk * 16 + ((lane >> 4) << 3), kChunksP));
            const int v_row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
            for (int np = 0; np < 16; ++np) {
                uint32_t bf[4];
                ldsm_x4_t(bf, k_tile + swz(v_row, kh * 256 + np * 16 + ((lane >> 4) << 3), kChunksQK));
                mma16816(frag4(acc_o, 2 * np), a, bf[0], bf[1]);
                mma16816(frag4(acc_o, 2 * np + 1), a, bf[2], bf[3]);
            }
        }
    }
    cp_async_wait_all();
    store_forward_rows<kSplit>(p, acc_o, l_run, m_run, red_sum, kh, lane, r0, bt, h0, split, [] { __syncthreads(); });
}

// ---------------------------------------------------------------------------------------------------------------
// Forward with Hopper warpgroup MMA (wgmma, sm_90a). Same block shape as above (one token, 64 heads, two
// warpgroups), operands read by the tensor cores straight from shared memory in the canonical 128-byte-swizzle
// layout: a 64-row tile is stored as 64-column "atoms" of 64 rows × 128 B (8 KB), 16-byte chunk c of row r at
// chunk c ^ (r mod 8). Warpgroup g computes S for entries 32g..32g+31 of each tile (m64n32k16, Q and K both
// K-major), the two exchange row maxima, write P (bf16) to shared memory, and warpgroup g accumulates latent
// columns 256g..256g+255 of O (m64n256k16, P K-major, V = the K tile read MN-major).
// Warp-specialized: a third warpgroup (40 registers, setmaxnreg) only gathers — Q once, then each tile's 64
// entries into one of two K buffers by cp.async, announced on an mbarrier — while the two compute warpgroups
// (232 registers) never issue a load; they hand a buffer back on a second mbarrier when both are done with it.
// ---------------------------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSRL_WGMMA 1
#endif

__device__ __forceinline__ void wgmma_m64n32_kk(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
        "%13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_m64n256_kt(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
        "%13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, "
        "%35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, "
        "%57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, "
        "%79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, "
        "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, "
        "%118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
          "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
          "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
          "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
          "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
          "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
          "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
          "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),
          "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),
          "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]),
          "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
          "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of accumulator registers across a wgmma wait (the wgmma asm
// statements "produce" them at issue, the hardware only at the wait).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle; lbo/sbo in bytes.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
           (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

// Byte offset of (row, col) in a 64-row atom-layout tile (see above).
__device__ __forceinline__ uint32_t atom_off(int row, int col) {
    return uint32_t((col >> 6) * 8192 + row * 128 + ((((col >> 3) & 7) ^ (row & 7)) << 4) + (col & 7) * 2);
}

// mbarrier and register-budget primitives of the warp-specialized forward.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {  // release: this thread's prior writes go with it
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival once every cp.async this thread issued before has landed (the count was set for it: noinc).
__device__ __forceinline__ void mbar_arrive_on_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {  // acquire
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
template <int N>
__device__ __forceinline__ void regs_increase() {
#ifdef DSRL_WGMMA
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_decrease() {
#ifdef DSRL_WGMMA
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Warp-specialized layout: warpgroups 0 and 1 compute (as described above), warpgroup 2 only gathers. The
// producer owns two K buffers; "full" phases say a tile (and, for the first, Q) has landed, "empty" phases that
// both consumer warpgroups are done reading one.
constexpr int kWsThreads = 384;
constexpr int kWsConsumers = 256;
constexpr int kWsOffK0 = kTileQKBytes;
constexpr int kWsOffK1 = 2 * kTileQKBytes;
constexpr int kWsOffP = 3 * kTileQKBytes;
constexpr int kWsOffIdx = kWsOffP + kTilePBytes;        // int32 [2][64]: the indices of each K buffer's tile
constexpr int kWsOffMax = kWsOffIdx + 2 * kBlockK * 4;  // float [2][64]; row sums reuse it after the loop
constexpr int kWsOffBar = kWsOffMax + 2 * kBlockH * 4;  // uint64 full[2], empty[2]
constexpr int kWgSmem = kWsOffBar + 4 * 8 + 1024;       // + slack to align the base to 1024 B
static_assert(kWgSmem <= 227 * 1024, "wgmma forward shared memory over the sm_90 limit");
constexpr int kWsConsumerRegs = 232;  // 2 × 128 × 232 + 128 × 40 ≤ 65536
constexpr int kWsProducerRegs = 40;

// Producer thread pt (0..127) stages row pt / 2 of a 64-row tile: 16-byte chunks (pt & 1) + 2m, m = 0..35, so
// one warp instruction covers 32 contiguous bytes of 16 rows. src < 0: a zero row.
__device__ __forceinline__ void gather_row_half(
    uint32_t tile, const __nv_bfloat16* lat, const __nv_bfloat16* pe, int64_t src, int pt) {
    const int r = pt >> 1, half = pt & 1;
    const bool ok = src >= 0;
    const __nv_bfloat16* lat_row = lat + (ok ? src * kMlaLatentDim : 0);
    const __nv_bfloat16* pe_row = pe + (ok ? src * kMlaRopeDim : 0);
    const uint32_t row_base = tile + r * 128;
#pragma unroll
    for (int m = 0; m < kChunksQK / 2; ++m) {
        const int c = half + 2 * m;  // (c >> 3) == m >> 2, (c & 7) == half + 2 (m & 3)
        const uint32_t dst = row_base + (m >> 2) * 8192 + (((half + 2 * (m & 3)) ^ (r & 7)) << 4);
        const __nv_bfloat16* src_ptr = m < kChunksV / 2 ? lat_row + c * 8 : pe_row + (c - kChunksV) * 8;
        cp_async16(dst, ok ? src_ptr : lat, ok);
    }
}

template <bool kSplit>
__global__ void __launch_bounds__(kWsThreads, 1) sparse_mla_fwd_wgmma_kernel(const SparseMlaFwdParams p) {
#ifdef DSRL_WGMMA
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    // Swizzled operands need 1024-byte-aligned tiles.
    uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t num_hblocks = (p.num_heads + kBlockH - 1) / kBlockH;
    const int64_t hb = blockIdx.x % num_hblocks;
    const int64_t bt = blockIdx.x / num_hblocks;
    const int64_t b = bt / p.num_queries;
    const int64_t h0 = hb * kBlockH;
    const int split = kSplit ? int(blockIdx.y) : 0;
    const int num_tiles = int((p.topk + kBlockK - 1) / kBlockK);
    const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
    const int t_begin = min(num_tiles, split * per_split);
    const int t_end = min(num_tiles, t_begin + per_split);

    int32_t* idx_s = reinterpret_cast<int32_t*>(smem + kWsOffIdx);
    float* red_max = reinterpret_cast<float*>(smem + kWsOffMax);
    float* red_sum = red_max;
    const uint32_t q_tile = smem_addr(smem), p_tile = smem_addr(smem + kWsOffP);
    const uint32_t k_tile0 = smem_addr(smem + kWsOffK0), k_tile1 = smem_addr(smem + kWsOffK1);
    const uint32_t bar_full = smem_addr(smem + kWsOffBar), bar_empty = bar_full + 16;  // [2] each, 8 B apart
    if (tid == 0) {
        for (int s = 0; s < 2; ++s) {
            mbar_init(bar_full + 8 * s, 2 * 128);  // per producer thread: its cp.async landing + its index stores
            mbar_init(bar_empty + 8 * s, kWsConsumers);
        }
    }
    __syncthreads();

    if (warp >= kWsConsumers / 32) {
        // ---- producer warpgroup: Q once, then each tile's entries into the buffer its consumers released ----
        regs_decrease<kWsProducerRegs>();
        const int pt = tid - kWsConsumers;
        const int r = pt >> 1;
        const auto* c_kv = static_cast<const __nv_bfloat16*>(p.c_kv) + b * p.ckv_batch_stride;
        const auto* k_pe = static_cast<const __nv_bfloat16*>(p.k_pe) + b * p.kpe_batch_stride;
        const int32_t* idx_row = p.indices + bt * p.topk;
        if (t_begin < t_end) {
            gather_row_half(q_tile, static_cast<const __nv_bfloat16*>(p.q_lat),
                            static_cast<const __nv_bfloat16*>(p.q_pe),
                            h0 + r < p.num_heads ? bt * p.num_heads + h0 + r : -1, pt);
        }
        for (int tile = t_begin; tile < t_end; ++tile) {
            const int n = tile - t_begin, s = n & 1;
            if (n >= 2) mbar_wait(bar_empty + 8 * s, ((n >> 1) + 1) & 1);  // tile n − 2's readers are done
            const int64_t e = int64_t(tile) * kBlockK + r;
            const int32_t src = e < p.topk ? __ldg(idx_row + e) : -1;
            if ((pt & 1) == 0) idx_s[s * kBlockK + r] = src;
            gather_row_half(s ? k_tile1 : k_tile0, c_kv, k_pe, src, pt);
            mbar_arrive_on_cp_async(bar_full + 8 * s);
            mbar_arrive(bar_full + 8 * s);
        }
        cp_async_wait_all();
        return;
    }

    // ---- consumer warpgroups ----
    regs_increase<kWsConsumerRegs>();
    const int rg = warp & 3, kh = warp >> 2;  // kh: the warpgroup
    const float scale_log2 = p.scale * kLog2e;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};
    float acc_o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc_o[i] = 0.f;
    const int r0 = rg * 16 + (lane >> 2);
    const uint64_t desc_q = smem_desc(q_tile, 16, 1024), desc_p = smem_desc(p_tile, 16, 1024);

    for (int tile = t_begin; tile < t_end; ++tile) {
        const int n = tile - t_begin, s = n & 1;
        const int32_t* idx_t = idx_s + s * kBlockK;
        mbar_wait(bar_full + 8 * s, (n >> 1) & 1);
        fence_async_smem();  // the tile arrived through the generic proxy; wgmma reads through the async one
        // Every consumer warp sees the same indices, so all of them take the same branch (top-k rows end in −1).
        const bool any_valid = __any_sync(0xffffffffu, idx_t[lane] >= 0 || idx_t[lane + 32] >= 0);
        if (any_valid) {
            const uint32_t k_tile = s ? k_tile1 : k_tile0;
            // S = Q · Kᵀ for this warpgroup's 32 entries: 36 k-steps of m64n32k16.
            float acc_s[16];
            wgmma_fence();
            const uint64_t desc_k = smem_desc(k_tile + kh * 32 * 128, 16, 1024);
#pragma unroll
            for (int kk = 0; kk < kDimQK / 16; ++kk) {
                const uint32_t koff = ((kk >> 2) * 8192 + (kk & 3) * 32) >> 4;  // descriptor units of 16 B
                wgmma_m64n32_kk(acc_s, desc_q + koff, desc_k + koff, kk > 0);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(acc_s);
            fence_regs(acc_o);

            // Both halves' row maxima; the barrier also says every consumer finished the previous tile's O
            // product, so P may be overwritten.
            float alpha[2];
            online_softmax_tile(
                acc_s, idx_t, kh, lane, r0, scale_log2, red_max, m_run, l_run, alpha,
                [] { named_barrier(1, kWsConsumers); },
                [&](int row, int col, uint32_t v) { st_shared_u32(p_tile + atom_off(row, col), v); });
            rescale_rows(acc_o, alpha);
            fence_async_smem();  // P was written with ordinary stores; the O product reads it through the async proxy
            named_barrier(2, kWsConsumers);  // all 64 rows × 64 entries of P are in shared memory

            // O += P · V: 4 k-steps of m64n256k16 over this warpgroup's 256 latent columns (V read MN-major).
            wgmma_fence();
            const uint64_t desc_v = smem_desc(k_tile + kh * 4 * 8192, 8192, 1024);
#pragma unroll
            for (int kk = 0; kk < kBlockK / 16; ++kk) {
                wgmma_m64n256_kt(acc_o, desc_p + kk * 2, desc_v + kk * 128, 1);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(acc_o);
        }
        fence_async_smem();  // the tensor cores' reads of this buffer are ordered before the producer's next writes
        mbar_arrive(bar_empty + 8 * s);
    }

    // Every read of red_max happened before this thread's last barrier 2.
    store_forward_rows<kSplit>(p, acc_o, l_run, m_run, red_sum, kh, lane, r0, bt, h0, split,
                               [] { named_barrier(1, kWsConsumers); });
#endif
}

// Combines split-KV partials: one block of 128 threads per (b, t, h) row, 4 columns per thread.
__global__ void __launch_bounds__(128) sparse_mla_combine_kernel(const SparseMlaFwdParams p) {
    const int64_t row = blockIdx.x;
    const int64_t plane = p.batch * p.num_queries * p.num_heads;
    float m = -INFINITY;
    for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.partial_lse[s * plane + row]);
    float total = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m != -INFINITY) {
        for (int s = 0; s < p.num_splits; ++s) {
            const float w = expf(p.partial_lse[s * plane + row] - m);
            total += w;
            const float4 v =
                reinterpret_cast<const float4*>(p.partial_out + (s * plane + row) * kMlaLatentDim)[threadIdx.x];
            acc.x += w * v.x;
            acc.y += w * v.y;
            acc.z += w * v.z;
            acc.w += w * v.w;
        }
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    auto* dst = static_cast<__nv_bfloat16*>(p.out) + row * kMlaLatentDim + threadIdx.x * 4;
    reinterpret_cast<__nv_bfloat162*>(dst)[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
    reinterpret_cast<__nv_bfloat162*>(dst)[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
    if (threadIdx.x == 0) p.lse[row] = total > 0.f ? m + logf(total) : -INFINITY;
}

}  // namespace

int sparse_mla_num_splits(int64_t batch, int64_t num_queries, int64_t num_heads, int64_t topk, int num_sms) {
    const int64_t blocks = batch * num_queries * ((num_heads + kBlockH - 1) / kBlockH);
    const int64_t tiles = (topk + kBlockK - 1) / kBlockK;
    if (blocks >= num_sms || tiles <= 1) return 1;
    // Enough splits to cover the device once, each keeping at least two tiles when possible.
    const int64_t want = (num_sms + blocks - 1) / blocks;
    return int(std::max<int64_t>(1, std::min<int64_t>({want, tiles / 2 > 0 ? tiles / 2 : 1, 64})));
}

cudaError_t launch_sparse_mla_fwd(const SparseMlaFwdParams& p, cudaStream_t stream) {
    const int64_t blocks = p.batch * p.num_queries * ((p.num_heads + kBlockH - 1) / kBlockH);
    if (blocks == 0) return cudaSuccess;
    bool wgmma = p.use_wgmma;
    if (wgmma) {  // the wgmma kernel is built for sm_90a only
        int device = 0, major = 0, minor = 0;
        cudaError_t err = cudaGetDevice(&device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
        if (err != cudaSuccess) return err;
        wgmma = major == 9 && minor == 0;
    }
    const bool split = p.num_splits > 1;
    if (split && (p.partial_out == nullptr || p.partial_lse == nullptr)) return cudaErrorInvalidValue;
    auto* kernel = wgmma ? (split ? sparse_mla_fwd_wgmma_kernel<true> : sparse_mla_fwd_wgmma_kernel<false>)
                         : (split ? sparse_mla_fwd_kernel<true> : sparse_mla_fwd_kernel<false>);
    const int smem = wgmma ? kWgSmem : kFwdSmem;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    kernel<<<dim3(unsigned(blocks), unsigned(p.num_splits)), wgmma ? kWsThreads : kThreads, smem, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess || !split) return err;
    const int64_t rows = p.batch * p.num_queries * p.num_heads;
    sparse_mla_combine_kernel<<<unsigned(rows), kMlaLatentDim / 4, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace dsrl::kernels
