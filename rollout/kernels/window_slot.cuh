// The slot of a window of decode steps a row reads and writes (rollout/sampling_cuda.h's SampleWindow): its position
// minus the window's first, modulo the window's slots. The sampling and step-records kernels share it.
#pragma once

#include <cstdint>

namespace dsrl::rollout::kernels {

#ifdef __CUDACC__
__device__ __forceinline__ int64_t window_slot(int64_t pos, int64_t base, int64_t capacity) {
    const int64_t s = (pos - base) % capacity;
    return s < 0 ? s + capacity : s;
}
#endif

}  // namespace dsrl::rollout::kernels
