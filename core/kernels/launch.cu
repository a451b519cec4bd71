// pdl_enabled() of core/kernels/launch.cuh, tile_stages_weights() of core/kernels/row_dot.cuh.
#include "core/env.h"
#include "core/kernels/launch.cuh"
#include "core/kernels/row_dot.cuh"

#include <atomic>
#include <cstdint>

namespace dsrl::kernels {

bool pdl_enabled() {
    static const bool enabled = [] {
        if (!env::get_bool("DSRL_PDL")) return false;
        int device = 0, major = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
            return false;
        }
        return major >= 9;
    }();
    return enabled;
}

namespace {
std::atomic<int> tile_stage_mode{-1};
}  // namespace

void set_tile_stage(int mode) { tile_stage_mode.store(mode); }

bool tile_stages_weights(const void* w, int64_t bytes) {
    static const bool from_env = env::get_bool("DSRL_TILE_STAGE");
    const int mode = tile_stage_mode.load();
    const bool enabled = mode < 0 ? from_env : mode > 0;
    return enabled && w != nullptr && bytes > 0 && bytes % 16 == 0 && bytes <= kTileStagedMaxBytes &&
           reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

}  // namespace dsrl::kernels
