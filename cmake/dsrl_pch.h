// The one precompiled header of dsrl (cmake/DsrlHelpers.cmake: dsrl_pch, reused by every C++ target).
// Only headers that most translation units need and that never change go here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
