// Exact per-row top-k (see topk.cuh). Design:
//   key(x): the float's bits made order-preserving as uint32 (negatives inverted, positives with the sign bit
//   set); -0 folded onto +0; NaN -> 0xFFFFFFFF; −inf and below -> 0, meaning "not selectable".
//   1. Rows longer than the candidate buffer: radix-select passes over global memory, 11 bits at a time
//      (histogram in shared memory), until the threshold bucket holds at most kCandCap keys (or is a single
//      value). Keys above the bucket are winners, keys in it are candidates.
//   2. One ordered compaction pass: winners go to the sort buffer, candidates to a shared buffer in column
//      order (a block-wide prefix count per tile keeps the order, so the lowest columns win exact ties).
//   3. The rest of the radix select runs on the candidates in shared memory; exact ties at the threshold
//      value are taken in column order.
//   4. Bitonic sort of the ≤ 2048 winners by (key desc, column asc); write indices, −1 padding.
// Rows of at most 512 keys take a rank kernel instead: each key's rank by counting the keys above it.
// Napkin math: 1-3 reads of the row (4 bytes per key); memory-bound. 4096 rows × 128K keys = 2.1 GB per pass.
#include "core/kernels/launch.cuh"
#include "dsa/kernels/topk.cuh"
#include "dsa/kernels/topk_rank.cuh"

namespace dsrl::dsa::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;     // 11-bit digits
constexpr int kCandCap = 4096;  // candidate buffer (keys + columns)
constexpr int kVec = 16;        // consecutive keys per thread per tile (4 float4 loads in flight)
constexpr int kTile = kThreads * kVec;

struct TopkSmem {
    unsigned long long sel[kTopkMax];  // winners: (key << 32) | ~column, sorted descending at the end
    uint32_t cand_key[kCandCap];
    int32_t cand_col[kCandCap];
    int hist[kBins];
    int scan[kWarps];
    int n_sel;
    int n_cand;  // candidates seen (may exceed kCandCap only for a single-value bucket)
    int found_bin, found_above, found_count;
};

// Loads keys [i0, i0 + kVec) of the row (0 past len).
__device__ __forceinline__ void load_keys(const float* row, int64_t i0, int len, bool aligned, uint32_t (&key)[kVec]) {
    if (aligned && i0 + kVec <= len) {
        float4 v[kVec / 4];
#pragma unroll
        for (int j = 0; j < kVec / 4; ++j) v[j] = *reinterpret_cast<const float4*>(row + i0 + 4 * j);
#pragma unroll
        for (int j = 0; j < kVec / 4; ++j) {
            key[4 * j + 0] = order_key(v[j].x);
            key[4 * j + 1] = order_key(v[j].y);
            key[4 * j + 2] = order_key(v[j].z);
            key[4 * j + 3] = order_key(v[j].w);
        }
    } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) key[e] = (i0 + e < len) ? order_key(row[i0 + e]) : 0u;
    }
}

// Compares the top `bits` bits of key with those of prefix: 1 above, 0 equal, −1 below (bits == 0: equal).
__device__ __forceinline__ int cmp_prefix(uint32_t key, uint32_t prefix, int bits) {
    if (bits == 0) return 0;
    const uint32_t a = key >> (32 - bits), b = prefix >> (32 - bits);
    return a > b ? 1 : (a == b ? 0 : -1);
}

// Exclusive prefix sum of v over the block (thread order); *total gets the sum. Contains barriers.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scan, int* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) scan[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int x = lane < kWarps ? scan[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int n = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += n;
        }
        if (lane < kWarps) scan[lane] = x;
    }
    __syncthreads();
    const int out = (warp > 0 ? scan[warp - 1] : 0) + incl - v;
    *total = scan[kWarps - 1];
    __syncthreads();
    return out;
}

// Over hist[0, nbins): finds the bin b, counted from the top, where the running count reaches need:
// above = Σ hist[> b] < need <= above + hist[b]. Requires Σ hist >= need >= 1. Contains barriers.
__device__ void find_bin(TopkSmem& s, int nbins, int need) {
    const int per = nbins / kThreads;  // 4 (2048 bins) or 2 (1024 bins)
    const int top = nbins - 1 - threadIdx.x * per;
    int local = 0;
    for (int j = 0; j < per; ++j) local += s.hist[top - j];
    int total;
    int above = block_exclusive_scan(local, s.scan, &total);
    for (int j = 0; j < per; ++j) {
        const int h = s.hist[top - j];
        if (above < need && need <= above + h) {
            s.found_bin = top - j;
            s.found_above = above;
            s.found_count = h;
        }
        above += h;
    }
    __syncthreads();
}

__device__ __forceinline__ void clear_hist(TopkSmem& s, int nbins) {
    for (int i = threadIdx.x; i < nbins; i += kThreads) s.hist[i] = 0;
    __syncthreads();
}

__global__ void __launch_bounds__(kThreads) topk_rows_kernel(const TopkParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TopkSmem& s = *reinterpret_cast<TopkSmem*>(smem_raw);
    const int tid = threadIdx.x;
    const int64_t r = blockIdx.x;
    const TopkRow out(p, r);
    const int len = out.len;
    const float* row = p.logits + r * p.row_stride;
    const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15u) == 0;

    uint32_t prefix = 0;
    int bits = 0;              // leading bits of the threshold known so far
    int need = p.topk;         // winners still needed from the current bucket
    bool take_bucket = false;  // the whole current bucket wins
    int target = -1;           // min(topk, #selectable), once known
    if (tid == 0) {
        s.n_sel = 0;
        s.n_cand = 0;
    }
    __syncthreads();  // a row with nothing visible (len 0) reaches the reads of both below without another barrier

    // 1. Global radix passes (only for rows that do not fit the candidate buffer).
    if (len > kCandCap) {
        while (true) {
            const int width = 32 - bits < 11 ? 32 - bits : 11;
            const int shift = 32 - bits - width;
            const int nbins = 1 << width;
            clear_hist(s, kBins);
            for (int64_t base = 0; base < len; base += kTile) {
                uint32_t key[kVec];
                load_keys(row, base + tid * kVec, len, aligned, key);
#pragma unroll
                for (int e = 0; e < kVec; ++e) {
                    if (key[e] != 0u && cmp_prefix(key[e], prefix, bits) == 0)
                        atomicAdd(&s.hist[(key[e] >> shift) & (nbins - 1)], 1);
                }
            }
            __syncthreads();
            if (bits == 0) {
                int local = 0;
                for (int j = tid; j < kBins; j += kThreads) local += s.hist[j];
                int total;
                block_exclusive_scan(local, s.scan, &total);
                if (total <= p.topk) {  // every selectable key wins
                    target = total;
                    take_bucket = true;
                    break;
                }
                target = p.topk;
            }
            find_bin(s, nbins, need);
            const int bin = s.found_bin, above = s.found_above, count = s.found_count;
            prefix |= static_cast<uint32_t>(bin) << shift;
            bits += width;
            need -= above;
            if (count == need) {
                take_bucket = true;
                break;
            }
            if (count <= kCandCap || bits == 32) break;
        }
    }

    // 2. Ordered compaction: winners (above the bucket, or the bucket itself) and candidates (in the bucket).
    for (int64_t base = 0; base < len; base += kTile) {
        uint32_t key[kVec];
        load_keys(row, base + tid * kVec, len, aligned, key);
        unsigned win_mask = 0, cand_mask = 0;
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
            const int c = key[e] == 0u ? -1 : cmp_prefix(key[e], prefix, bits);
            if (c > 0 || (c == 0 && take_bucket)) {
                win_mask |= 1u << e;
            } else if (c == 0) {
                cand_mask |= 1u << e;
            }
        }
        int total;
        const int off = block_exclusive_scan(__popc(win_mask) | (__popc(cand_mask) << 16), s.scan, &total);
        int w = s.n_sel + (off & 0xFFFF), c = s.n_cand + (off >> 16);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
            const uint32_t col = static_cast<uint32_t>(base + tid * kVec + e);
            if (win_mask & (1u << e)) {
                s.sel[w++] = (static_cast<unsigned long long>(key[e]) << 32) | static_cast<uint32_t>(~col);
            } else if (cand_mask & (1u << e)) {
                if (c < kCandCap) {
                    s.cand_key[c] = key[e];
                    s.cand_col[c] = static_cast<int32_t>(col);
                }
                ++c;
            }
        }
        __syncthreads();  // everyone has read n_sel / n_cand
        if (tid == 0) {
            s.n_sel += total & 0xFFFF;
            s.n_cand += total >> 16;
        }
        __syncthreads();
    }

    // 3. Finish the selection among the candidates in shared memory.
    const int n_cand = s.n_cand < kCandCap ? s.n_cand : kCandCap;
    if (target < 0) {  // short row: everything selectable is a candidate
        target = n_cand < p.topk ? n_cand : p.topk;
        need = target;
        if (need == n_cand) take_bucket = true;
    }
    while (!take_bucket && bits < 32) {
        const int width = 32 - bits < 11 ? 32 - bits : 11;
        const int shift = 32 - bits - width;
        const int nbins = 1 << width;
        clear_hist(s, kBins);
        for (int i = tid; i < n_cand; i += kThreads) {
            const uint32_t key = s.cand_key[i];
            if (cmp_prefix(key, prefix, bits) == 0) atomicAdd(&s.hist[(key >> shift) & (nbins - 1)], 1);
        }
        __syncthreads();
        find_bin(s, nbins, need);
        const int bin = s.found_bin, above = s.found_above, count = s.found_count;
        prefix |= static_cast<uint32_t>(bin) << shift;
        bits += width;
        need -= above;
        if (count == need) take_bucket = true;
    }
    // Candidates above the threshold win; at the threshold, all (take_bucket) or the first `need` in column
    // order (bits == 32: exact ties).
    int ties_taken = 0;
    for (int base = 0; base < n_cand; base += kThreads) {
        const int i = base + tid;
        int c = -1;
        uint32_t key = 0;
        if (i < n_cand) {
            key = s.cand_key[i];
            c = cmp_prefix(key, prefix, bits);
        }
        const int is_tie = (c == 0 && !take_bucket) ? 1 : 0;
        int total;
        const int tie_rank = ties_taken + block_exclusive_scan(is_tie, s.scan, &total);
        const bool win = c > 0 || (c == 0 && (take_bucket || tie_rank < need));
        // Count winners of this chunk in order to place them (block scan again; cheap, ≤ 8 chunks).
        int n_total;
        const int off = block_exclusive_scan(win ? 1 : 0, s.scan, &n_total);
        if (win) {
            const uint32_t col = static_cast<uint32_t>(s.cand_col[i]);
            s.sel[s.n_sel + off] = (static_cast<unsigned long long>(key) << 32) | static_cast<uint32_t>(~col);
        }
        ties_taken += total;
        __syncthreads();
        if (tid == 0) s.n_sel += n_total;
        __syncthreads();
    }

    // 4. Sort the winners by (key desc, column asc) and write them.
    const int n_sel = s.n_sel < target ? s.n_sel : target;  // == target by construction
    int n_pow2 = 1;
    while (n_pow2 < n_sel) n_pow2 <<= 1;
    for (int i = n_sel + tid; i < n_pow2; i += kThreads) s.sel[i] = 0ull;
    __syncthreads();
    for (int k = 2; k <= n_pow2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int t = tid; t < n_pow2 / 2; t += kThreads) {
                const int i = 2 * j * (t / j) + (t % j);
                const int l = i + j;
                const unsigned long long a = s.sel[i], b = s.sel[l];
                const bool descending = (i & k) == 0;
                if (descending ? a < b : a > b) {
                    s.sel[i] = b;
                    s.sel[l] = a;
                }
            }
            __syncthreads();
        }
    }
    for (int i = tid; i < p.topk; i += kThreads)
        out.put(p, i, i < n_sel ? static_cast<int32_t>(~static_cast<uint32_t>(s.sel[i] & 0xFFFFFFFFull)) : -1);
}

// Rows of at most kRankMax keys (a decode step's indexer over a few hundred keys): a thread per key, its rank counted
// (topk_rank.cuh rank_select_row). The same order as the radix path, without its passes and barriers.
__global__ void __launch_bounds__(kRankMax) topk_rank_kernel(const TopkParams p) {
    dsrl::kernels::pdl_enter();
    extern __shared__ __align__(16) uint32_t rank_keys[];  // [num_cols rounded up to 4]
    const int64_t r = blockIdx.x;
    const TopkRow out(p, r);
    const int tid = threadIdx.x;  // blockDim.x >= the padded row: a key each
    rank_select_row(p, out, tid < out.len ? order_key(p.logits[r * p.row_stride + tid]) : 0u, rank_keys);
}

}  // namespace

cudaError_t launch_topk_rows(const TopkParams& params, cudaStream_t stream) {
    if (params.num_rows == 0 || params.topk <= 0) return cudaSuccess;
    if (params.topk > kTopkMax || params.rows_per_group <= 0 || params.num_rows > 0x7FFFFFFFLL)
        return cudaErrorInvalidValue;
    if (params.num_cols <= kRankMax) {  // short rows: a thread per key (at least a warp, for the block-wide count)
        const int threads = static_cast<int>((params.num_cols + 31) / 32 * 32);
        const size_t bytes = sizeof(uint32_t) * static_cast<size_t>((params.num_cols + 3) / 4 * 4);
        return dsrl::kernels::launch(topk_rank_kernel, static_cast<unsigned>(params.num_rows),
                                     threads > 0 ? threads : 32, bytes > 0 ? bytes : 16, stream, params);
    }
    const int smem = static_cast<int>(sizeof(TopkSmem));
    cudaError_t err = cudaFuncSetAttribute(topk_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    return dsrl::kernels::launch(topk_rows_kernel, static_cast<unsigned>(params.num_rows), kThreads, smem, stream,
                                 params);
}

}  // namespace dsrl::dsa::kernels
