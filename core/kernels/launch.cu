// pdl_enabled() of core/kernels/launch.cuh.
#include <cstdlib>
#include <cstring>

#include "core/kernels/launch.cuh"

namespace dsrl::kernels {

bool pdl_enabled() {
    static const bool enabled = [] {
        const char* env = std::getenv("DSRL_PDL");
        if (env != nullptr && std::strcmp(env, "0") == 0) return false;
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
