// pdl_enabled() of core/kernels/launch.cuh.
#include "core/env.h"
#include "core/kernels/launch.cuh"

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

}  // namespace dsrl::kernels
