#include "tests/oracle_util.h"

#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>

namespace dsrl::testing {

nlohmann::json load_oracle(const std::string& unit) {
    const char* dir = std::getenv("DSRL_ORACLE_DIR");
    if (dir == nullptr) {
        ADD_FAILURE() << "DSRL_ORACLE_DIR is not set; run through ctest (fixture " << unit << "_oracle)";
        return nullptr;
    }
    const std::string path = std::string(dir) + "/" + unit + ".json";
    std::ifstream in(path);
    if (!in) {
        ADD_FAILURE() << "missing " << path << " (the oracle fixture " << unit << "_oracle did not run)";
        return nullptr;
    }
    return nlohmann::json::parse(in);
}

std::string oracle_path(const std::string& name) {
    const char* dir = std::getenv("DSRL_ORACLE_DIR");
    if (dir == nullptr) {
        ADD_FAILURE() << "DSRL_ORACLE_DIR is not set; run through ctest";
        return "";
    }
    return std::string(dir) + "/" + name;
}

at::Tensor json_to_tensor(const nlohmann::json& j, at::ScalarType dtype) {
    std::vector<int64_t> shape;
    for (const nlohmann::json* cur = &j; cur->is_array(); cur = &(*cur)[0]) {
        shape.push_back(static_cast<int64_t>(cur->size()));
        if (cur->empty()) break;
    }
    std::vector<double> flat;
    std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& v) {
        if (v.is_array()) {
            for (const auto& e : v) walk(e);
        } else {
            flat.push_back(v.get<double>());
        }
    };
    walk(j);
    return at::tensor(flat, at::kDouble).view(shape).to(dtype);
}

}  // namespace dsrl::testing
