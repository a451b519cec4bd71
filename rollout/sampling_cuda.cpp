// Host wrapper of the sampling kernel (rollout/sampling_cuda.h).
#include "rollout/sampling_cuda.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/env.h"
#include "rollout/kernels/sample.cuh"
#include "rollout/kernels/step_records.cuh"
#include "rollout/sampling.h"

namespace dsrl::rollout::cuda {

bool sample_kernel_fits(const at::Tensor& logits) {
    return logits.defined() && logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
           logits.is_contiguous() && logits.size(1) >= 1 && logits.size(1) <= kernels::kSampleMaxVocab;
}

namespace {

constexpr const char* kOp = "sample (cuda)";

// The sort's stages of stride < 32 by warp shuffles: DSRL_SAMPLE_SORT (core/env.cpp) until set_sample_warp_stages.
std::atomic<bool>& warp_stages() {
    static std::atomic<bool> on{env::get_choice("DSRL_SAMPLE_SORT", {"warp", "block"}) == "warp"};
    return on;
}

kernels::SampleParams params(const at::Tensor& logits, const SamplingParams& p) {
    TORCH_CHECK(sample_kernel_fits(logits), kOp,
                ": logits must be contiguous CUDA fp32 [R, V] with V <= ", kernels::kSampleMaxVocab, ", got ",
                logits.scalar_type(), " ", logits.sizes());
    TORCH_CHECK(p.temperature >= 0 && p.top_p > 0 && p.top_p <= 1 && p.top_k >= 0 && p.min_p >= 0 && p.min_p <= 1, kOp,
                ": invalid sampling parameters");
    const int64_t V = logits.size(1);
    return {.logits = logits.data_ptr<float>(),
            .rows = logits.size(0),
            .vocab = V,
            .greedy = p.greedy(),
            .inv_temperature = p.greedy() ? 1.0f : 1.0f / static_cast<float>(p.temperature),
            .top_k = p.top_k,
            .use_min_p = p.min_p > 0,
            .log_min_p = p.min_p > 0 ? static_cast<float>(std::log(p.min_p)) : 0.f,
            .top_p = p.top_p,
            .truncate = truncates(p, V),
            .warp_stages = warp_stages().load()};
}

// `t` is a contiguous tensor of `type` with `numel` elements on `device`.
void check_array(const at::Tensor& t,
                 at::ScalarType type,
                 int64_t numel,
                 const at::Device& device,
                 const char* name,
                 const char* shape) {
    TORCH_CHECK(
        t.defined() && t.scalar_type() == type && t.numel() == numel && t.is_contiguous() && t.device() == device, kOp,
        ": ", name, " must be contiguous ", type, " ", shape, " (", numel, " elements) on ", device, ", got ",
        t.defined() ? t.sizes() : at::IntArrayRef{}, t.defined() ? " " : "undefined ",
        t.defined() ? t.scalar_type() : type);
}

// Checks a step's arrays — `slots` of each (1 without a window), every row's at its slot — and launches the kernel;
// returns the step's tokens [R].
at::Tensor run(kernels::SampleParams k,
               const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               int64_t slots,
               const at::Tensor& logp,
               const at::Tensor& kept) {
    const int64_t R = logits.size(0), V = logits.size(1), n = slots * R;
    const at::Device dev = logits.device();
    const bool window = k.capacity > 0;
    check_array(uniform, at::kDouble, n, dev, "uniform", window ? "[C, R, 1]" : "[R, 1]");
    if (forced.defined()) check_array(forced, at::kLong, n, dev, "forced", window ? "[C, R]" : "[R]");
    check_array(logp, at::kFloat, n, dev, "logp", window ? "[C, R]" : "[R]");
    if (kept.defined()) check_array(kept, at::kByte, n * ((V + 7) / 8), dev, "kept", "[.., ceil(V / 8)]");
    const c10::cuda::CUDAGuard on_device(dev);
    at::Tensor tokens = at::empty({R}, logits.options().dtype(at::kLong));
    k.uniform = uniform.data_ptr<double>();
    k.forced = forced.defined() ? forced.data_ptr<int64_t>() : nullptr;
    k.tokens = tokens.data_ptr<int64_t>();
    k.logp = logp.data_ptr<float>();
    k.kept = kept.defined() ? kept.data_ptr<uint8_t>() : nullptr;
    C10_CUDA_CHECK(kernels::launch_sample(k, c10::cuda::getCurrentCUDAStream(dev.index()).stream()));
    return tokens;
}

}  // namespace

void set_sample_warp_stages(bool on) { warp_stages().store(on); }

Sampled sample(const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               const SamplingParams& p,
               bool kept_bits) {
    RECORD_FUNCTION("dsrl::sample", std::vector<c10::IValue>());  // names the kernel in profiles
    const kernels::SampleParams k = params(logits, p);
    const int64_t R = logits.size(0), V = logits.size(1);
    Sampled s;
    s.logp = at::empty({R}, logits.options());
    if (kept_bits) s.kept = at::empty({R, (V + 7) / 8}, logits.options().dtype(at::kByte));
    s.tokens = run(k, logits, uniform, forced, 1, s.logp, s.kept);
    return s;
}

Sampled sample(const at::Tensor& logits,
               const at::Tensor& uniform,
               const at::Tensor& forced,
               const SamplingParams& p,
               const SampleWindow& w) {
    RECORD_FUNCTION("dsrl::sample", std::vector<c10::IValue>());
    kernels::SampleParams k = params(logits, p);
    const int64_t R = logits.size(0);
    TORCH_CHECK(uniform.defined() && uniform.dim() == 3 && uniform.size(0) >= 1, kOp,
                ": a window's uniform must be [C, R, 1]");
    const int64_t C = uniform.size(0);
    check_array(w.pos, at::kLong, R, logits.device(), "window.pos", "[R]");
    check_array(w.base, at::kLong, R, logits.device(), "window.base", "[R]");
    check_array(w.tokens, at::kLong, C * R, logits.device(), "window.tokens", "[C, R]");
    k.pos = w.pos.data_ptr<int64_t>();
    k.base = w.base.data_ptr<int64_t>();
    k.capacity = C;
    k.window_tokens = w.tokens.data_ptr<int64_t>();
    return {.tokens = run(k, logits, uniform, forced, C, w.logp, w.kept)};
}

bool step_records(const std::vector<at::Tensor>& routes,
                  const at::Tensor& routes_dst,
                  const std::vector<at::Tensor>& topk,
                  const at::Tensor& topk_dst,
                  const at::Tensor& pos,
                  const at::Tensor& base) {
    if (!pos.defined() || !pos.is_cuda() || pos.scalar_type() != at::kLong || pos.dim() != 1 || !pos.is_contiguous() ||
        !base.defined() || base.device() != pos.device() || base.scalar_type() != at::kLong ||
        base.sizes() != pos.sizes() || !base.is_contiguous())
        return false;
    const int64_t R = pos.size(0);
    kernels::StepRecordsParams k{};
    int64_t capacity = -1;
    // One group: the sources' rows as 4-byte words, each [R, ...] contiguous of dst's row type and size.
    const auto group = [&](const std::vector<at::Tensor>& src, const at::Tensor& dst, kernels::RecordGroup& g) {
        if (src.empty()) return true;
        const auto n = static_cast<int64_t>(src.size());
        if (!dst.defined() || n > kernels::kMaxRecordSources || !dst.is_contiguous() || dst.device() != pos.device() ||
            dst.dim() < 3 || dst.size(1) != R || dst.size(2) != n)
            return false;
        const int64_t per_row = dst.numel() / std::max<int64_t>(dst.size(0) * R * n, 1);  // elements of a source row
        const int64_t row_bytes = per_row * dst.element_size();
        if (row_bytes % 4 != 0 || row_bytes == 0 || (capacity >= 0 && capacity != dst.size(0))) return false;
        capacity = dst.size(0);
        for (int64_t j = 0; j < n; ++j) {
            const at::Tensor& t = src[static_cast<size_t>(j)];
            if (!t.defined() || t.device() != pos.device() || t.scalar_type() != dst.scalar_type() ||
                !t.is_contiguous() || t.numel() != R * per_row)
                return false;
            g.src[j] = static_cast<const uint32_t*>(t.const_data_ptr());
        }
        g.n = static_cast<int>(n);
        g.words = row_bytes / 4;
        g.dst = static_cast<uint32_t*>(dst.data_ptr());
        return true;
    };
    if (!group(routes, routes_dst, k.group[0]) || !group(topk, topk_dst, k.group[1])) return false;
    if (capacity < 0) return false;  // nothing to record: the caller's add does the positions
    RECORD_FUNCTION("dsrl::step_records", std::vector<c10::IValue>());
    const c10::cuda::CUDAGuard on_device(pos.device());
    k.pos = pos.data_ptr<int64_t>();
    k.base = base.data_ptr<int64_t>();
    k.capacity = capacity;
    k.rows = R;
    C10_CUDA_CHECK(kernels::launch_step_records(k, c10::cuda::getCurrentCUDAStream(pos.device().index()).stream()));
    return true;
}

}  // namespace dsrl::rollout::cuda
