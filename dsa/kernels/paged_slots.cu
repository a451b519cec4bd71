// The slots a paged decode step's attention reads (see paged_slots.cuh): one thread per output entry. It replaces the
// five ATen ops of the gather through the block table (cast, clamp, gather, compare, where), per layer and step.
#include "core/kernels/launch.cuh"
#include "dsa/kernels/paged_slots.cuh"

#include <algorithm>

namespace dsrl::dsa::kernels {
namespace {

__global__ void paged_slots_kernel(PagedSlotsParams p) {
    dsrl::kernels::pdl_enter();
    const int64_t total = p.batch * p.len * p.width;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t j = i % p.width, bl = i / p.width, b = bl / p.len;
        int64_t slot = -1;
        if (p.topk != nullptr) {
            const int64_t key = p.topk[i];
            if (key >= 0 && key < p.keys) slot = p.read[b * p.keys + key];
        } else if (p.key_valid[b * p.keys + j] && j <= p.query_pos[bl]) {
            slot = p.read[b * p.keys + j];
        }
        p.out[i] = slot;
    }
}

// A block per row; its threads over each part's values.
__global__ void paged_write_kernel(PagedWriteParams p) {
    dsrl::kernels::pdl_enter();
    const int64_t n = blockIdx.x;
    const int64_t slot = p.slots[n];
    if (slot < 0 || slot >= p.pool_rows) return;
    for (int i = 0; i < p.parts; ++i) {
        const PagedWriteParams::Part& q = p.part[i];
        for (int64_t d = threadIdx.x; d < q.width; d += blockDim.x) {
            dsrl::kernels::store_elem(q.pool, q.pool_type, slot * q.pool_stride + d,
                                      dsrl::kernels::load_elem(q.src, q.src_type, n * q.src_stride + d));
        }
    }
}

// A block per row; its threads over the keys, then the rotary factors.
__global__ void paged_step_kernel(PagedStepParams p) {
    dsrl::kernels::pdl_enter();
    const int64_t r = blockIdx.x, bs = p.block_size;
    const int64_t* table = p.table + r * p.blocks;
    const int64_t pos = p.pos[r];
    for (int64_t j = threadIdx.x; j < p.keys; j += blockDim.x) {
        p.read[r * p.keys + j] = table[j / bs] * bs + j % bs;
        p.key_valid[r * p.keys + j] = j <= pos;
    }
    if (threadIdx.x == 0) p.write[r] = pos >= 0 && pos < p.blocks * bs ? table[pos / bs] * bs + pos % bs : -1;
    if (p.inv_freq == nullptr) return;
    const float fpos = __ll2float_rn(pos);
    for (int i = threadIdx.x; i < p.half; i += blockDim.x) {
        const float f = __fmul_rn(fpos, p.inv_freq[i]);
        float c = cosf(f), s = sinf(f);
        if (p.scaled) {
            c = __fmul_rn(c, p.factor);
            s = __fmul_rn(s, p.factor);
        }
        p.cos[r * p.half + i] = c;
        p.sin[r * p.half + i] = s;
    }
}

}  // namespace

cudaError_t launch_paged_step(const PagedStepParams& p, cudaStream_t stream) {
    if (p.rows == 0) return cudaSuccess;
    if (p.rows > 0x7fffffff || p.blocks < 1 || p.block_size < 1 || p.keys < 0 || p.keys > p.blocks * p.block_size ||
        p.half < 0 || (p.inv_freq != nullptr && (p.cos == nullptr || p.sin == nullptr)))
        return cudaErrorInvalidValue;
    return dsrl::kernels::launch(paged_step_kernel, static_cast<unsigned>(p.rows), 256, 0, stream, p);
}

cudaError_t launch_paged_write(const PagedWriteParams& p, cudaStream_t stream) {
    if (p.rows == 0 || p.parts == 0) return cudaSuccess;
    if (p.rows > 0x7fffffff || p.parts < 0 || p.parts > kPagedWriteParts) return cudaErrorInvalidValue;
    return dsrl::kernels::launch(paged_write_kernel, static_cast<unsigned>(p.rows), 128, 0, stream, p);
}

cudaError_t launch_paged_slots(const PagedSlotsParams& p, cudaStream_t stream) {
    const int64_t total = p.batch * p.len * p.width;
    if (total == 0) return cudaSuccess;
    constexpr int kThreads = 256;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
    return dsrl::kernels::launch(paged_slots_kernel, blocks, kThreads, 0, stream, p);
}

}  // namespace dsrl::dsa::kernels
