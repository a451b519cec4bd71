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

/// Enables bf16 autocast for `device`'s type on this thread while alive (no-op when !enabled, and on CPU unless
/// `on_cpu`: jobs compute fp32 there; tests use it to check what autocast changes); restores the previous state when
/// it ends. Autocast's cache of weight casts is off inside the scope: that cache
/// keeps the first bf16 copy of every fp32 weight until the outermost autocast region ends, so in a scope that spans a
/// job every forward after an optimizer step (or a weight sync, or a load into the same tensors) would still compute
/// with the weights of the first forward. Without it each forward casts the weights it uses (one bf16 write per
/// weight), and a captured CUDA graph reads the live fp32 weights.
class AutocastScope {
public:
    AutocastScope(c10::Device device, bool enabled, bool on_cpu = false);
    ~AutocastScope();
    AutocastScope(const AutocastScope&) = delete;
    AutocastScope& operator=(const AutocastScope&) = delete;
    bool active() const { return active_; }

private:
    bool active_ = false;
    c10::DeviceType type_ = c10::DeviceType::CUDA;
    bool prev_enabled_ = false;
    bool prev_cache_ = true;
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
