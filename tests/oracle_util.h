// Helpers of the parity tests (label `parity`): load the JSON a Python oracle fixture wrote to
// $DSRL_ORACLE_DIR/<unit>.json, and turn nested JSON arrays into tensors.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace dsrl::testing {

/// Parses $DSRL_ORACLE_DIR/<unit>.json; adds a gtest failure naming the file and returns null when it is
/// missing (the fixture did not run).
nlohmann::json load_oracle(const std::string& unit);

/// $DSRL_ORACLE_DIR/<name> (files and directories a fixture wrote); adds a gtest failure and returns ""
/// when DSRL_ORACLE_DIR is unset.
std::string oracle_path(const std::string& name);

/// A nested JSON array of numbers as a tensor of that shape (built in float64, then cast to `dtype`).
at::Tensor json_to_tensor(const nlohmann::json& j, at::ScalarType dtype = at::kFloat);

}  // namespace dsrl::testing
