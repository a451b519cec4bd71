// The decode step's projections on the tensor cores (see linear.cuh). A block computes 32 or 64 rows × 32 columns:
// the K dimension in chunks of 64 through a ring of three shared-memory stages (cp.async), mma.sync m16n8k16 with fp32
// accumulators, each output rounded once to x's type as cuBLAS rounds it (the sum over K runs in another order, so a
// value can differ in its last bit). 64-row blocks where they still give a wave of blocks (the q_b stack: its 3 MB of
// weights read four times from L2 at batch 256 instead of eight), 32-row ones elsewhere.
#include "core/kernels/launch.cuh"
#include "dsa/kernels/linear.cuh"

#include "core/kernels/mma.cuh"

namespace dsrl::kernels {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kBK = 64;        // reduction columns a stage (8 chunks of 16 bytes a row)
constexpr int kBN = kLinearCols;
// Stages of the ring: as many as fit the 48 KiB default (six of 8 KiB, four of 12 KiB), so that five or three chunks
// are in flight: the kernel is a chain of L2 / HBM round trips, not of math.
template <int kBM>
constexpr int stages() {
    return kBM == 64 ? 4 : 6;
}
constexpr int kRowBytes = kBK * 2;

template <int kBM>
constexpr int stage_bytes() {
    return (kBM + kBN) * kRowBytes;  // x rows | weight rows
}

// Warps: with 64 rows, warp w takes rows 16w.. and all 32 columns (four n8 tiles); with 32 rows, rows 16 (w mod 2)
// and columns 16 (w / 2) (two n8 tiles).
template <typename T, int kBM>
__global__ void __launch_bounds__(kThreads) linear_kernel(const LinearParams p) {
    constexpr int kStages = stages<kBM>();
    constexpr int kTiles = kBM == 64 ? 4 : 2;  // n8 tiles a warp
    constexpr int kXPieces = kBM * 8 / kThreads, kWPieces = kBN * 8 / kThreads;
    extern __shared__ __align__(128) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = static_cast<int>(blockIdx.x) * kBN;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
    const int chunks = p.k / kBK;
    const uint32_t base = smem_addr(smem);
    const int64_t batch = blockIdx.z;
    const auto* x = static_cast<const T*>(p.x) + batch * p.x_batch_stride;
    const auto* w = static_cast<const T*>(p.w) + batch * p.w_batch_stride;
    const int64_t w_rows = p.w_row_stride > 0 ? p.w_row_stride : p.k;
    const T* w_src[kWPieces];
    uint32_t w_dst[kWPieces];
#pragma unroll
    for (int j = 0; j < kWPieces; ++j) {
        const int i = tid + j * kThreads, r = i >> 3, c = (i & 7) * 8;
        w_src[j] = w + static_cast<int64_t>(n0 + r) * w_rows + c;
        w_dst[j] = kBM * kRowBytes + swz(r, c, 8);
    }
    const auto stage_w = [&](int kc, int s) {
#pragma unroll
        for (int j = 0; j < kWPieces; ++j)
            cp_async16(base + s * stage_bytes<kBM>() + w_dst[j], w_src[j] + kc * kBK, true);
    };
    // The weights' first stages in one group before the wait: no kernel of the step writes them.
    for (int s = 0; s < kStages - 1 && s < chunks; ++s) stage_w(s, s);
    cp_async_commit();
    pdl_enter();
    const T* x_src[kXPieces];
    uint32_t x_dst[kXPieces];
    bool x_ok[kXPieces];
#pragma unroll
    for (int j = 0; j < kXPieces; ++j) {
        const int i = tid + j * kThreads, r = i >> 3, c = (i & 7) * 8;
        x_ok[j] = m0 + r < p.rows;
        x_src[j] = x + (x_ok[j] ? m0 + r : 0) * p.x_row_stride + c;
        x_dst[j] = swz(r, c, 8);
    }
    const auto stage = [&](int kc, int s) {
#pragma unroll
        for (int j = 0; j < kXPieces; ++j)
            cp_async16(base + s * stage_bytes<kBM>() + x_dst[j], x_src[j] + kc * kBK, x_ok[j]);
        if (kc >= kStages - 1) stage_w(kc, s);
    };
    const int row0 = kBM == 64 ? 16 * warp : 16 * (warp & 1), col0 = kBM == 64 ? 0 : 16 * (warp >> 1);
    const bool busy = m0 + row0 < p.rows;  // a warp whose rows are all past the end only stages
    float acc[kTiles][4] = {};
    // The ring (its first wait also covers the weights' group, older than every x group).
    cp_async_pipeline<kStages>(chunks, stage, [&](int s) {
        if (!busy) return;
        const uint32_t a = base + s * stage_bytes<kBM>(), b = a + kBM * kRowBytes;
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
            uint32_t af[4];
            ldsm_x4(af, frag_a_addr(a, row0, kk, lane));
#pragma unroll
            for (int nb = 0; nb < kTiles / 2; ++nb) {
                uint32_t bf[4];
                ldsm_x4(bf, frag_b_addr(b, col0 + 16 * nb, kk, lane));
                mma16816_t<T>(acc[2 * nb], af, bf[0], bf[1]);
                mma16816_t<T>(acc[2 * nb + 1], af, bf[2], bf[3]);
            }
        }
    });
    if (!busy) return;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = m0 + row0 + (lane >> 2) + 8 * half;
        if (r >= p.rows) continue;
#pragma unroll
        for (int nt = 0; nt < kTiles; ++nt) {
            const int c = n0 + col0 + 8 * nt + 2 * (lane & 3);
            const T v0 = to_operand<T>(acc[nt][2 * half]), v1 = to_operand<T>(acc[nt][2 * half + 1]);
            const int64_t idx = batch * p.y_batch_stride + r * p.y_row_stride + c;
            if (p.y_f32) {
                *reinterpret_cast<float2*>(static_cast<float*>(p.y) + idx) =
                    make_float2(from_operand(v0), from_operand(v1));
            } else {
                const T pair[2] = {v0, v1};
                *reinterpret_cast<uint32_t*>(static_cast<T*>(p.y) + idx) = *reinterpret_cast<const uint32_t*>(pair);
            }
        }
    }
}

template <typename T, int kBM>
cudaError_t launch_rows(const LinearParams& p, cudaStream_t stream) {
    constexpr int kSmem = stages<kBM>() * stage_bytes<kBM>();  // 48 KiB: the default limit
    static_assert(kSmem <= 48 * 1024, "within the default dynamic shared memory");
    const dim3 grid(static_cast<unsigned>(p.n / kBN), static_cast<unsigned>((p.rows + kBM - 1) / kBM),
                    static_cast<unsigned>(p.batches));
    return launch(linear_kernel<T, kBM>, grid, kThreads, kSmem, stream, p);
}

template <typename T>
cudaError_t launch_typed(const LinearParams& p, int sms, cudaStream_t stream) {
    const int64_t wide_blocks = (p.n / kBN) * ((p.rows + 63) / 64) * p.batches;
    return wide_blocks >= sms ? launch_rows<T, 64>(p, stream) : launch_rows<T, 32>(p, stream);
}

}  // namespace

cudaError_t launch_linear(const LinearParams& p, int sms, cudaStream_t stream) {
    if (p.rows == 0) return cudaSuccess;
    if (!linear_takes(p.n, p.k) || (p.rows + 31) / 32 > 65535 || p.batches < 1 || p.batches > 65535)
        return cudaErrorInvalidValue;
    switch (p.type) {
        case Elem::kBF16:
            return launch_typed<__nv_bfloat16>(p, sms, stream);
        case Elem::kF16:
            return launch_typed<__half>(p, sms, stream);
        default:
            return cudaErrorInvalidValue;
    }
}

}  // namespace dsrl::kernels
