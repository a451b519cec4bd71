// A block per row (see step_records.cuh): the row's slot from its position, the groups' rows copied word by word, then
// its position moved on once every thread has read it.
#include "core/kernels/launch.cuh"
#include "rollout/kernels/step_records.cuh"
#include "rollout/kernels/window_slot.cuh"

namespace dsrl::rollout::kernels {
namespace {

constexpr int kThreads = 128;

__device__ void copy_group(const RecordGroup& g, int64_t slot, int64_t row, int64_t rows) {
    const int64_t total = g.n * g.words;
    uint32_t* dst = g.dst + (slot * rows + row) * total;
    for (int64_t w = threadIdx.x; w < total; w += kThreads) {
        const int64_t j = w / g.words, i = w - j * g.words;
        dst[w] = g.src[j][row * g.words + i];
    }
}

__global__ void __launch_bounds__(kThreads) step_records_kernel(StepRecordsParams p) {
    dsrl::kernels::pdl_enter();
    const int64_t row = blockIdx.x;
    const int64_t pos = p.pos[row];
    const int64_t slot = window_slot(pos, p.base[row], p.capacity);
    for (const RecordGroup& g : p.group) {
        if (g.n > 0) copy_group(g, slot, row, p.rows);
    }
    __syncthreads();  // every thread has read pos
    if (threadIdx.x == 0) p.pos[row] = pos + 1;
}

}  // namespace

cudaError_t launch_step_records(const StepRecordsParams& p, cudaStream_t stream) {
    if (p.rows == 0) return cudaSuccess;
    if (p.capacity < 1 || p.rows > 0x7fffffff) return cudaErrorInvalidValue;
    for (const RecordGroup& g : p.group) {
        if (g.n < 0 || g.n > kMaxRecordSources || (g.n > 0 && (g.words < 1 || g.dst == nullptr)))
            return cudaErrorInvalidValue;
    }
    return dsrl::kernels::launch(step_records_kernel, static_cast<unsigned>(p.rows), kThreads, 0, stream, p);
}

}  // namespace dsrl::rollout::kernels
