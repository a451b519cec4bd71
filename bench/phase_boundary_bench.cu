// What a phase boundary of a decode step costs on the device: P phases of trivial work (each thread adds one to its
// element) as P kernels launched under programmatic dependent launch and captured in a CUDA graph — dsrl's decode step
// today — against one resident kernel crossing P grid-wide barriers (an arrival counter, release / acquire) — the
// persistent kernel a step could become. Graph replays timed by CUDA events, the best of 200; grids of one and two
// blocks of 256 threads per multiprocessor. Prints µs per phase; never pass / fail.
//   build/bin/dsrl_bench_phase_boundary
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace {

#define CHECK_CUDA(x)                                                                                       \
    do {                                                                                                    \
        const cudaError_t e = (x);                                                                          \
        if (e != cudaSuccess) {                                                                             \
            std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e), __FILE__, __LINE__); \
            std::exit(1);                                                                                   \
        }                                                                                                   \
    } while (0)

// Every block arrives once per barrier; the barrier of epoch e is passed when the counter reaches e (the blocks of
// a launch count on from `base`, the arrivals of the launches before it in the graph).
__device__ __forceinline__ void grid_barrier(unsigned* arrivals, unsigned& epoch) {
    __syncthreads();
    epoch += gridDim.x;
    if (threadIdx.x == 0) {
        unsigned v;
        asm volatile("atom.add.release.gpu.u32 %0, [%1], 1;" : "=r"(v) : "l"(arrivals) : "memory");
        do {
            asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(arrivals) : "memory");
        } while (static_cast<int>(v - epoch) < 0);
    }
    __syncthreads();
}

__global__ void persistent_kernel(float* buf, unsigned* arrivals, int phases, unsigned base) {
    unsigned epoch = base;
    for (int p = 0; p < phases; ++p) {
        buf[blockIdx.x * blockDim.x + threadIdx.x] += 1.f;
        grid_barrier(arrivals, epoch);
    }
}

__global__ void phase_kernel(float* buf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    buf[blockIdx.x * blockDim.x + threadIdx.x] += 1.f;
}

constexpr int kLaunches = 10;  // launches (or kernels per phase count) per graph
constexpr int kReplays = 200;

float best_replay_ms(cudaGraphExec_t exec, cudaStream_t s, unsigned* arrivals) {
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    float best = 1e30f;
    for (int i = 0; i < kReplays; ++i) {
        if (arrivals != nullptr) CHECK_CUDA(cudaMemsetAsync(arrivals, 0, sizeof(unsigned), s));
        CHECK_CUDA(cudaEventRecord(a, s));
        CHECK_CUDA(cudaGraphLaunch(exec, s));
        CHECK_CUDA(cudaEventRecord(b, s));
        CHECK_CUDA(cudaEventSynchronize(b));
        float ms = 0.f;
        CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
        if (ms < best) best = ms;
    }
    CHECK_CUDA(cudaEventDestroy(a));
    CHECK_CUDA(cudaEventDestroy(b));
    return best;
}

}  // namespace

int main() {
    int device = 0, sms = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        std::printf("dsrl_bench_phase_boundary: no CUDA device\n");
        return 0;
    }
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cudaDeviceProp prop{};
    CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
    std::printf(
        "dsrl_bench_phase_boundary: %s, %d multiprocessors; us per phase boundary (graph replays, best of %d)\n",
        prop.name, sms, kReplays);
    std::printf("%8s %7s | %14s %20s\n", "grid", "phases", "PDL kernels", "persistent + barrier");
    float* buf = nullptr;
    unsigned* arrivals = nullptr;
    CHECK_CUDA(cudaMalloc(&buf, sizeof(float) * 2 * sms * 256));
    CHECK_CUDA(cudaMemset(buf, 0, sizeof(float) * 2 * sms * 256));
    CHECK_CUDA(cudaMalloc(&arrivals, sizeof(unsigned)));
    cudaStream_t s;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (const int per_sm : {1, 2}) {
        for (const int phases : {1, 12, 48}) {
            const int grid = per_sm * sms;
            cudaGraph_t g;
            cudaGraphExec_t exec;
            // P kernels per launch group, each under PDL (sm_90+).
            CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < kLaunches * phases; ++i) {
                cudaLaunchAttribute attr{};
                attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr.val.programmaticStreamSerializationAllowed = 1;
                cudaLaunchConfig_t config{};
                config.gridDim = grid;
                config.blockDim = 256;
                config.stream = s;
                config.attrs = &attr;
                config.numAttrs = major >= 9 ? 1 : 0;
                CHECK_CUDA(cudaLaunchKernelEx(&config, phase_kernel, buf));
            }
            CHECK_CUDA(cudaStreamEndCapture(s, &g));
            CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
            const float kernels_us = best_replay_ms(exec, s, nullptr) * 1000.f / (kLaunches * phases);
            CHECK_CUDA(cudaGraphExecDestroy(exec));
            CHECK_CUDA(cudaGraphDestroy(g));
            // One resident kernel per launch crossing P barriers (all blocks fit at once: one or two per
            // multiprocessor).
            CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            unsigned base = 0;
            for (int i = 0; i < kLaunches; ++i) {
                persistent_kernel<<<grid, 256, 0, s>>>(buf, arrivals, phases, base);
                base += static_cast<unsigned>(grid * phases);
            }
            CHECK_CUDA(cudaGetLastError());
            CHECK_CUDA(cudaStreamEndCapture(s, &g));
            CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
            const float persistent_us = best_replay_ms(exec, s, arrivals) * 1000.f / (kLaunches * phases);
            CHECK_CUDA(cudaGraphExecDestroy(exec));
            CHECK_CUDA(cudaGraphDestroy(g));
            std::printf("%8d %7d | %14.2f %20.2f\n", grid, phases, kernels_us, persistent_us);
        }
    }
    CHECK_CUDA(cudaFree(buf));
    CHECK_CUDA(cudaFree(arrivals));
    CHECK_CUDA(cudaStreamDestroy(s));
    return 0;
}
