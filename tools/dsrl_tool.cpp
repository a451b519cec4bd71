// dsrl_tool: inspection utilities around the model, so anyone can compare dsrl with another implementation.
//
//   dsrl_tool info    --model DIR
//   dsrl_tool forward --model DIR --input in.safetensors --output out.safetensors [--device cpu|cuda]
//                     [--dtype fp32|bf16] [--path auto|dense|sparse]
//
// forward reads `input_ids` (int64 [B, L]) and optional `attention_mask` (int64/bool [B, L], 1 = real token)
// and writes `logits` (fp32 [B, L, V]) and, per layer i, `topk_indices.{i}` (int32 [B, L, index_topk], −1 for
// invalid entries).
#include <ATen/core/grad_mode.h>
#include <c10/core/Device.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <chrono>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/main_guard.h"
#include "core/safetensors.h"
#include "dsa/hf_checkpoint.h"
#include "dsa/model.h"
#include "dsa/weights.h"

namespace {

using dsrl::ConfigError;

constexpr const char* kUsage = R"(usage:
  dsrl_tool info    --model DIR
  dsrl_tool forward --model DIR --input IN.safetensors --output OUT.safetensors
                    [--device cpu|cuda] [--dtype fp32|bf16] [--path auto|dense|sparse]

info     prints the checkpoint's config, parameter counts (total / activated per token) and tensor dtypes.
forward  runs the model on `input_ids` (int64 [B, L]) and optional `attention_mask` ([B, L], 1 = real token)
         and writes `logits` (fp32 [B, L, V]) and `topk_indices.{i}` (int32 [B, L, index_topk], -1 = invalid)
         for every layer i.
)";

std::map<std::string, std::string> parse_flags(const std::vector<std::string>& args, size_t first,
                                               const std::vector<std::string>& allowed) {
    std::map<std::string, std::string> out;
    for (size_t i = first; i < args.size(); ++i) {
        const std::string& a = args[i];
        bool known = false;
        for (const std::string& k : allowed) known |= a == "--" + k;
        if (!known) throw ConfigError(absl::StrCat("dsrl_tool: unknown argument '", a, "'\n", kUsage));
        if (i + 1 >= args.size()) throw ConfigError(absl::StrCat("dsrl_tool: ", a, " needs a value"));
        out[a.substr(2)] = args[++i];
    }
    return out;
}

const std::string& required(const std::map<std::string, std::string>& flags, const std::string& key) {
    const auto it = flags.find(key);
    if (it == flags.end()) throw ConfigError(absl::StrCat("dsrl_tool: --", key, " is required\n", kUsage));
    return it->second;
}

std::string human(int64_t n) {
    if (n >= 1'000'000'000) return absl::StrFormat("%.2fB", n / 1e9);
    if (n >= 1'000'000) return absl::StrFormat("%.2fM", n / 1e6);
    if (n >= 1'000) return absl::StrFormat("%.1fK", n / 1e3);
    return std::to_string(n);
}

int info(const std::map<std::string, std::string>& flags) {
    const std::string& dir = required(flags, "model");
    const dsrl::dsa::HfCheckpointReader reader = dsrl::dsa::HfCheckpointReader::open(dir);
    const dsrl::ModelConfig& c = reader.config();
    std::cout << "checkpoint: " << dir << "\n";
    std::cout << dsrl::dsa::hf_config_json(c, at::kFloat) << "\n";
    const dsrl::dsa::ParamCounts n = dsrl::dsa::count_parameters(c);
    std::cout << "parameters: " << human(n.total) << " total (" << n.total << "), " << human(n.activated)
              << " activated per token (" << n.activated << ")\n";
    std::map<std::string, int64_t> by_dtype;
    int64_t quantized = 0, extra = 0;
    for (const std::string& name : reader.names()) {
        ++by_dtype[reader.info(name).dtype];
        quantized += reader.is_quantized(name);
        extra += reader.is_extra_layer(name);
    }
    std::cout << "tensors: " << reader.names().size() << " (";
    const char* sep = "";
    for (const auto& [dtype, count] : by_dtype) {
        std::cout << sep << count << " " << dtype;
        sep = ", ";
    }
    std::cout << "); " << quantized << " FP8 block-quantized; " << extra
              << " in extra layers (multi-token prediction, skipped on load)\n";
    return 0;
}

int forward(const std::map<std::string, std::string>& flags) {
    const std::string& dir = required(flags, "model");
    const std::string& input = required(flags, "input");
    const std::string& output = required(flags, "output");
    const std::string device_name = flags.count("device") ? flags.at("device") : "cpu";
    if (device_name != "cpu" && device_name != "cuda") {
        throw ConfigError(absl::StrCat("dsrl_tool: --device must be cpu or cuda, got '", device_name, "'"));
    }
    dsrl::ModelConfig job;
    const std::string dtype = flags.count("dtype") ? flags.at("dtype") : "fp32";
    if (dtype != "fp32" && dtype != "bf16") {
        throw ConfigError(absl::StrCat("dsrl_tool: --dtype must be fp32 or bf16, got '", dtype, "'"));
    }
    job.dtype = dtype == "bf16" ? dsrl::DType::kBFloat16 : dsrl::DType::kFloat32;
    dsrl::dsa::ForwardOptions opt{.return_topk = true};
    const std::string path = flags.count("path") ? flags.at("path") : "auto";
    if (path == "dense") {
        opt.path = dsrl::dsa::AttentionPath::kDense;
    } else if (path == "sparse") {
        opt.path = dsrl::dsa::AttentionPath::kSparse;
    } else if (path != "auto") {
        throw ConfigError(absl::StrCat("dsrl_tool: --path must be auto, dense or sparse, got '", path, "'"));
    }

    const dsrl::SafetensorsFile in = dsrl::SafetensorsFile::open(input);
    if (!in.contains("input_ids")) {
        throw dsrl::DataError(absl::StrCat(input, ": missing tensor 'input_ids' (int64 [B, L])"));
    }
    dsrl::dsa::ForwardInput fin;
    fin.input_ids = in.get("input_ids");
    if (fin.input_ids.dim() != 2 || at::isFloatingType(fin.input_ids.scalar_type())) {
        throw dsrl::DataError(absl::StrCat(input, ": tensor 'input_ids' must be an integer [B, L] tensor, got ",
                                           in.info("input_ids").dtype, " of rank ", fin.input_ids.dim()));
    }
    if (in.contains("attention_mask")) {
        fin.attention_mask = in.get("attention_mask");
        if (fin.attention_mask.sizes() != fin.input_ids.sizes()) {
            throw dsrl::DataError(absl::StrCat(input, ": tensor 'attention_mask' must have the shape of input_ids"));
        }
    }

    const auto t0 = std::chrono::steady_clock::now();
    const dsrl::dsa::Model model = dsrl::dsa::Model::load(dir, job, c10::Device(device_name));
    const auto t1 = std::chrono::steady_clock::now();
    at::NoGradGuard no_grad;
    const dsrl::dsa::ForwardOutput out = model.forward(fin, opt);
    const auto t2 = std::chrono::steady_clock::now();
    std::vector<std::pair<std::string, at::Tensor>> tensors{{"logits", out.logits.cpu()}};
    for (size_t i = 0; i < out.topk.size(); ++i) tensors.emplace_back(absl::StrCat("topk_indices.", i), out.topk[i].cpu());
    dsrl::save_safetensors(output, tensors, {{"format", "pt"}, {"producer", "dsrl_tool forward"}});
    const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    std::cerr << absl::StrFormat("dsrl_tool: loaded %s in %.2fs, forward [%d, %d] in %.2fs, wrote %s\n", dir,
                                 secs(t0, t1), fin.input_ids.size(0), fin.input_ids.size(1), secs(t1, t2), output);
    return 0;
}

int run(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::cout << kUsage;
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "info") return info(parse_flags(args, 1, {"model"}));
    if (args[0] == "forward") return forward(parse_flags(args, 1, {"model", "input", "output", "device", "dtype", "path"}));
    throw ConfigError(absl::StrCat("dsrl_tool: unknown command '", args[0], "'\n", kUsage));
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
