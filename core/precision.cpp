#include "core/precision.h"

#include <ATen/autocast_mode.h>

namespace dsrl {

AutocastScope::AutocastScope(c10::Device device, bool enabled, bool on_cpu) : type_(device.type()) {
    if (!enabled || !(device.is_cuda() || (on_cpu && device.is_cpu()))) return;
    active_ = true;
    prev_enabled_ = at::autocast::is_autocast_enabled(type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_dtype(type_, c10::ScalarType::BFloat16);
    at::autocast::set_autocast_enabled(type_, true);
    prev_cache_ = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);  // see precision.h: cached casts go stale when weights change
    at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, prev_enabled_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
    at::autocast::set_autocast_cache_enabled(prev_cache_);
}

}  // namespace dsrl
