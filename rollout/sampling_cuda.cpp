// Host wrapper of the sampling kernel (rollout/sampling_cuda.h).
#include "rollout/sampling_cuda.h"

#include <cmath>

#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rollout/kernels/sample.cuh"
#include "rollout/sampling.h"

namespace dsrl::rollout::cuda {

bool sample_kernel_fits(const at::Tensor& logits) {
    return logits.defined() && logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
           logits.is_contiguous() && logits.size(1) >= 1 && logits.size(1) <= kernels::kSampleMaxVocab;
}

Sampled sample(const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               const SamplingParams& p,
               bool kept_bits) {
    RECORD_FUNCTION("dsrl::sample", std::vector<c10::IValue>());  // names the kernel in profiles
    constexpr const char* op = "sample (cuda)";
    TORCH_CHECK(sample_kernel_fits(logits), op,
                ": logits must be contiguous CUDA fp32 [R, V] with V <= ", kernels::kSampleMaxVocab, ", got ",
                logits.scalar_type(), " ", logits.sizes());
    const int64_t R = logits.size(0), V = logits.size(1);
    TORCH_CHECK(uniform.scalar_type() == at::kDouble && uniform.numel() == R && uniform.is_contiguous() &&
                    uniform.device() == logits.device(),
                op, ": uniform must be contiguous fp64 [", R, ", 1] on ", logits.device(), ", got ",
                uniform.scalar_type(), " ", uniform.sizes());
    TORCH_CHECK(!forced.defined() || (forced.scalar_type() == at::kLong && forced.numel() == R &&
                                      forced.is_contiguous() && forced.device() == logits.device()),
                op, ": forced must be contiguous int64 [", R, "] on ", logits.device());
    TORCH_CHECK(p.temperature >= 0 && p.top_p > 0 && p.top_p <= 1 && p.top_k >= 0 && p.min_p >= 0 && p.min_p <= 1, op,
                ": invalid sampling parameters");
    const c10::cuda::CUDAGuard on_device(logits.device());
    Sampled s;
    s.tokens = at::empty({R}, logits.options().dtype(at::kLong));
    s.logp = at::empty({R}, logits.options());
    if (kept_bits) s.kept = at::empty({R, (V + 7) / 8}, logits.options().dtype(at::kByte));
    const kernels::SampleParams k{.logits = logits.data_ptr<float>(),
                                  .uniform = uniform.data_ptr<double>(),
                                  .forced = forced.defined() ? forced.data_ptr<int64_t>() : nullptr,
                                  .rows = R,
                                  .vocab = V,
                                  .greedy = p.greedy(),
                                  .inv_temperature = p.greedy() ? 1.0f : 1.0f / static_cast<float>(p.temperature),
                                  .top_k = p.top_k,
                                  .use_min_p = p.min_p > 0,
                                  .log_min_p = p.min_p > 0 ? static_cast<float>(std::log(p.min_p)) : 0.f,
                                  .top_p = p.top_p,
                                  .truncate = truncates(p, V),
                                  .tokens = s.tokens.data_ptr<int64_t>(),
                                  .logp = s.logp.data_ptr<float>(),
                                  .kept = kept_bits ? s.kept.data_ptr<uint8_t>() : nullptr};
    C10_CUDA_CHECK(kernels::launch_sample(k, c10::cuda::getCurrentCUDAStream(logits.device().index()).stream()));
    return s;
}

}  // namespace dsrl::rollout::cuda
