// Host wrapper of the decode projections' kernel (dsa/linear_cuda.h): checks, device guard, current stream.
#include "dsa/linear_cuda.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "core/env.h"
#include "core/kernel_elem.h"
#include "dsa/kernels/linear.cuh"

namespace dsrl::dsa::cuda {
namespace {

// Every block of rows reads all of w from L2: past about 2 MiB that costs more than cuBLAS's larger tiles save
// (measured on an H100, batch-256 step of single_gpu.yaml: its 3 MiB q_b stack, n = 3,968, on this kernel made the
// step 36 µs slower than on cuBLAS, while fused_a, W_UV, o_proj and lm_head, 0.4-1.2 MiB each, made it faster).
constexpr int64_t kMaxWeightBytes = int64_t{2} << 20;
constexpr int64_t kMaxRows = 1024;  // a decode step's rows; a prefill's thousands stay with cuBLAS

bool enabled() {
    static const bool on = env::get_bool("DSRL_DECODE_LINEAR");
    return on;
}

// What every use of the kernel needs: CUDA bf16 / fp16 of one type on one device, 16-byte aligned, no autograd
// recording, autocast off or of their type, the enabling knob.
bool common_fits(const at::Tensor& x, const at::Tensor& w) {
    if (!enabled() || !x.defined() || !w.defined() || !x.is_cuda() || w.device() != x.device() ||
        w.scalar_type() != x.scalar_type() || (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) ||
        x.dim() < 1 || x.stride(-1) != 1 || !aligned16(x.data_ptr()) || !aligned16(w.data_ptr()))
        return false;
    if (at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
    return !at::autocast::is_autocast_enabled(at::kCUDA) ||
           at::autocast::get_autocast_dtype(at::kCUDA) == x.scalar_type();
}

// The kernel on x's device and current stream.
void run(const kernels::LinearParams& p, const at::Tensor& x) {
    const c10::cuda::CUDAGuard on_device(x.device());
    C10_CUDA_CHECK(kernels::launch_linear(p, at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                          c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
}

// y = x · wᵀ into y's rows (n elements apart), fp32 when `f32`.
void linear_into(const at::Tensor& y, bool f32, const at::Tensor& x, const at::Tensor& w) {
    run({.x = x.data_ptr(),
         .x_row_stride = flat_row_stride(x, 1),
         .w = w.data_ptr(),
         .y = y.data_ptr(),
         .y_row_stride = w.size(0),
         .type = kernel_elem(x.scalar_type()),
         .y_f32 = f32,
         .rows = x.numel() / x.size(-1),
         .n = static_cast<int>(w.size(0)),
         .k = static_cast<int>(w.size(1))},
        x);
}

// Under autocast, an fp32 x with weights of the autocast type (a training job's rollout: fp32 residual stream, the
// matmul weights cast once): the kernel reads x cast as at::linear's autocast would cast it.
bool autocast_cast(const at::Tensor& x, const at::Tensor& w) {
    return x.defined() && w.defined() && x.scalar_type() == at::kFloat && x.is_cuda() &&
           at::autocast::is_autocast_enabled(at::kCUDA) &&
           w.scalar_type() == at::autocast::get_autocast_dtype(at::kCUDA);
}

// x as the kernel reads it: cast to w's type under autocast_cast.
at::Tensor operand_of(const at::Tensor& x, const at::Tensor& w) {
    return autocast_cast(x, w) ? x.to(w.scalar_type()) : x;
}

// A decode step's rows, and weights that every block of rows may read from L2.
bool sizes_fit(int64_t rows, const at::Tensor& w) {
    return rows <= kMaxRows && w.numel() * w.element_size() <= kMaxWeightBytes;
}

// common_fits for an fp32 x read as its autocast cast (a new contiguous tensor: its strides do not matter).
bool cast_fits(const at::Tensor& x, const at::Tensor& w) {
    if (!enabled() || w.device() != x.device() || x.dim() < 1 || !aligned16(w.data_ptr())) return false;
    return !at::GradMode::is_enabled() || (!x.requires_grad() && !w.requires_grad());
}

}  // namespace

bool decode_linear_fits(const at::Tensor& x, const at::Tensor& w) {
    const bool cast = autocast_cast(x, w);
    if (!(cast ? cast_fits(x, w) : common_fits(x, w)) || w.dim() != 2 || x.size(-1) != w.size(1) ||
        !kernels::linear_takes(w.size(0), w.size(1)) || !w.is_contiguous())
        return false;
    const int64_t rows = x.numel() / x.size(-1);
    if (!cast) {
        const int64_t stride = flat_row_stride(x, 1);
        if (stride < 0 || stride % 8 != 0) return false;
    }
    return sizes_fit(rows, w);
}

bool decode_heads_fits(const at::Tensor& x, const at::Tensor& w) {
    const bool cast = autocast_cast(x, w);
    if (!(cast ? cast_fits(x, w) : common_fits(x, w)) || x.dim() < 2 || w.dim() != 3 || w.size(0) != x.size(-2) ||
        w.size(2) != x.size(-1) || !kernels::linear_takes(w.size(1), w.size(2)) || w.stride(2) != 1 ||
        w.stride(1) % 8 != 0 || w.stride(0) % 8 != 0 || x.size(-2) > 65535)
        return false;
    const int64_t rows = x.numel() / (x.size(-1) * x.size(-2));
    if (!cast) {
        const int64_t stride = flat_row_stride(x, 2);
        if (stride < 0 || stride % 8 != 0 || x.stride(-2) % 8 != 0) return false;
    }
    return sizes_fit(rows, w);
}

at::Tensor decode_heads(const at::Tensor& x0, const at::Tensor& w) {
    RECORD_FUNCTION("dsrl::decode_heads", std::vector<c10::IValue>());  // names the kernel in profiles
    const at::Tensor x = operand_of(x0, w);
    TORCH_CHECK(decode_heads_fits(x, w),
                "decode_heads (cuda): x [..., H, k] and w [H, n, k] do not fit the kernel "
                "(decode_heads_fits); got x ",
                x.scalar_type(), " ", x.sizes(), ", w ", w.scalar_type(), " ", w.sizes());
    const int64_t H = w.size(0), n = w.size(1), k = w.size(2);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = n;
    at::Tensor y = at::empty(shape, x.options());
    run({.x = x.data_ptr(),
         .x_row_stride = flat_row_stride(x, 2),
         .w = w.data_ptr(),
         .y = y.data_ptr(),
         .y_row_stride = H * n,
         .type = kernel_elem(x.scalar_type()),
         .y_f32 = false,
         .rows = x.numel() / (H * k),
         .n = static_cast<int>(n),
         .k = static_cast<int>(k),
         .batches = static_cast<int>(H),
         .x_batch_stride = x.stride(-2),
         .w_batch_stride = w.stride(0),
         .y_batch_stride = n,
         .w_row_stride = w.stride(1)},
        x);
    return y;
}

namespace {

// x as the kernel reads it (cast under autocast), checked against decode_linear_fits.
at::Tensor linear_operand(const at::Tensor& x0, const at::Tensor& w) {
    const at::Tensor x = operand_of(x0, w);
    TORCH_CHECK(decode_linear_fits(x, w),
                "decode_linear (cuda): x [..., k] and w [n, k] must be CUDA bf16/fp16 of one type, w contiguous, x's "
                "rows of one stride, k a multiple of 64 and n of 32, aligned, without autograd; got x ",
                x.scalar_type(), " ", x.sizes(), ", w ", w.scalar_type(), " ", w.sizes());
    return x;
}

}  // namespace

at::Tensor decode_linear(const at::Tensor& x0, const at::Tensor& w, bool f32) {
    RECORD_FUNCTION("dsrl::decode_linear", std::vector<c10::IValue>());  // names the kernel in profiles
    const at::Tensor x = linear_operand(x0, w);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = w.size(0);
    at::Tensor y = at::empty(shape, x.options().dtype(f32 ? at::kFloat : x.scalar_type()));
    linear_into(y, f32, x, w);
    return y;
}

void decode_linear_f32_out(const at::Tensor& out, const at::Tensor& x0, const at::Tensor& w) {
    RECORD_FUNCTION("dsrl::decode_linear", std::vector<c10::IValue>());
    const at::Tensor x = linear_operand(x0, w);
    TORCH_CHECK(out.defined() && out.scalar_type() == at::kFloat && out.is_contiguous() && out.device() == x.device() &&
                    out.numel() == x.numel() / x.size(-1) * w.size(0),
                "decode_linear (cuda): out must be contiguous fp32 with ", x.numel() / x.size(-1) * w.size(0),
                " elements on ", x.device());
    linear_into(out, true, x, w);
}

}  // namespace dsrl::dsa::cuda
