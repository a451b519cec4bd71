#include "core/precision.h"

#include <ATen/autocast_mode.h>

namespace dsrl {

AutocastScope::AutocastScope(c10::Device device, bool enabled) {
    if (!enabled || !device.is_cuda()) return;
    active_ = true;
    prev_enabled_ = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
    prev_dtype_ = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, c10::ScalarType::BFloat16);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
    prev_cache_ = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);  // see precision.h: cached casts go stale when weights change
    at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, prev_enabled_);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, prev_dtype_);
    at::autocast::set_autocast_cache_enabled(prev_cache_);
}

}  // namespace dsrl
