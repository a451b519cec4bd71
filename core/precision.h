// Mixed precision (SPEC §7: bf16 on GPU, fp32 on CPU). Parameters and optimizer state stay fp32; on CUDA the
// trainer runs forwards (rollout and training) inside an AutocastScope, so matmuls run in bf16 with fp32
// accumulation. Parts of the model that must stay fp32 under autocast — the MoE router's logits and the
// indexer's head weights (SPEC §2.2, §2.4) — open an Fp32Region, which switches autocast off for its scope.
//
//   AutocastScope amp(device, /*enabled=*/device.is_cuda());   // bf16 autocast for this thread
//   { Fp32Region fp32; logits = at::linear(x.to(at::kFloat), w.to(at::kFloat)); }
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace dsrl {

/// Enables bf16 autocast for `device`'s type on this thread while alive (no-op when !enabled or on CPU);
/// restores the previous state and clears the autocast cast cache when it ends.
class AutocastScope {
public:
    AutocastScope(c10::Device device, bool enabled);
    ~AutocastScope();
    AutocastScope(const AutocastScope&) = delete;
    AutocastScope& operator=(const AutocastScope&) = delete;
    bool active() const { return active_; }

private:
    bool active_ = false;
    bool prev_enabled_ = false;
    c10::ScalarType prev_dtype_ = c10::ScalarType::BFloat16;
};

/// Autocast is off inside this scope (ops run in the dtypes of their inputs).
class Fp32Region {
public:
    Fp32Region() : guard_(c10::autocast_dispatch_keyset) {}

private:
    c10::impl::ExcludeDispatchKeyGuard guard_;
};

}  // namespace dsrl
