// dsrl_tool: inspection utilities (model, rollout records, GRPO loss), so anyone can compare dsrl with another
// implementation.
//
//   dsrl_tool info     --model DIR
//   dsrl_tool init     --config JOB.yaml --out DIR [--set KEY=VALUE ...]
//   dsrl_tool forward  --model DIR --input in.safetensors --output out.safetensors [--device cpu|cuda]
//                      [--dtype fp32|bf16] [--path auto|dense|sparse]
//   dsrl_tool rollouts FILE [--max-groups N] [--tokens] [--tokenizer DIR] [--tokenizer DIR]
//   dsrl_tool grpo-loss --input BATCH.safetensors --grad-output GRAD.safetensors [--set grpo.KEY=VALUE ...]
//   dsrl_tool tokenize --tokenizer DIR [--decode]
//   dsrl_tool chat-render --tokenizer DIR --format deepseek_v32 --input CONV.json [--thinking|--no-thinking] [--ids]
//   dsrl_tool chat-parse --tokenizer DIR --format deepseek_v32 [--thinking|--no-thinking] [--strict]
//   dsrl_tool generate --model DIR --input PROMPTS.jsonl --output OUT.jsonl [--set KEY=VALUE ...] [--records FILE]
//   dsrl_tool synth-envs --out DIR --envs N --tasks-per-env M --seed S [--max-difficulty K]
//
// forward reads `input_ids` (int64 [B, L]) and optional `attention_mask` (int64/bool [B, L], 1 = real token)
// and writes `logits` (fp32 [B, L, V]) and, per layer i, `topk_indices.{i}` (int32 [B, L, index_topk], −1 for
// invalid entries).
#include <ATen/core/grad_mode.h>
#include <ATen/ops/full.h>
#include <c10/core/Device.h>

#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include "agent/synth_env.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "dsa/hf_checkpoint.h"
#include "dsa/model.h"
#include "dsa/weights.h"
#include "grpo/loss.h"
#include "rollout/record.h"
#include "text/tokenizer.h"

#include "core/fs.h"
#include "text/byte_chat_tokenizer.h"
#include "text/chat_format.h"
#include "text/hf_tokenizer.h"
#include "tools/generate.h"
#include "trainer/config.h"

namespace {

using dsrl::ConfigError;

constexpr const char* kUsage = R"(usage:
  dsrl_tool info     --model DIR
  dsrl_tool init     --config JOB.yaml --out DIR [--set KEY=VALUE ...]
  dsrl_tool forward  --model DIR --input IN.safetensors --output OUT.safetensors
                     [--device cpu|cuda] [--dtype fp32|bf16] [--path auto|dense|sparse]
  dsrl_tool rollouts FILE [--max-groups N] [--tokens] [--tokenizer DIR]
  dsrl_tool grpo-loss --input BATCH.safetensors --grad-output GRAD.safetensors [--set grpo.KEY=VALUE ...]
  dsrl_tool tokenize --tokenizer DIR [--decode]
  dsrl_tool chat-render --tokenizer DIR --format deepseek_v32 --input CONV.json [--thinking|--no-thinking] [--ids]
  dsrl_tool chat-parse --tokenizer DIR --format deepseek_v32 [--thinking|--no-thinking] [--strict]
  dsrl_tool generate --model DIR --input PROMPTS.jsonl --output OUT.jsonl [--set KEY=VALUE ...] [--records FILE]
  dsrl_tool synth-envs --out DIR --envs N --tasks-per-env M --seed S [--max-difficulty K]

init     writes the model a job starts from when model.path is empty (its model section, random weights from
         run.seed, exactly as dsrl_train initializes them) as a Hugging Face checkpoint in DIR (config.json +
         safetensors, written atomically): for benchmarks and other tools (transformers loads it).
info     prints the checkpoint's config, parameter counts (total / activated per token) and tensor dtypes.
forward  runs the model on `input_ids` (int64 [B, L]) and optional `attention_mask` ([B, L], 1 = real token)
         and writes `logits` (fp32 [B, L, V]) and `topk_indices.{i}` (int32 [B, L, index_topk], -1 = invalid)
         for every layer i.
rollouts prints a rollout record file (--dump-rollouts, rollout/record.h): per group its domain, prompt id and
         size G; per sample its finish reason, policy version, lengths, reward, decoded response, mean
         log-prob, kept-set sizes and the bytes per token of kept sets, routes and indexer sets. --max-groups N stops after
         N groups; --tokens adds one line per response token: id, text, log-prob, kept-set size and its
         routes in every MoE layer. Texts decode with DIR's tokenizer.json when --tokenizer DIR is given, with
         the byte-level tokenizer for the demo's vocabulary, else ids are shown.
grpo-loss computes dsrl's GRPO loss (SPEC §5) on `logp`, `logp_old`, `logp_ref`, `valid` (fp32 [N, T]),
         `rewards` (fp32 [N], NaN = failed) and `group` (int64 [N]); writes `grad_logp` (fp32 [N, T]) = d loss /
         d logp and prints one JSON line with `loss` and every metric. --set takes grpo keys (grpo.beta,
         grpo.delta, grpo.eps_low, grpo.eps_high, grpo.loss_agg, grpo.adv_norm, grpo.off_policy_mask).
tokenize reads standard input, one JSON value per line, with DIR's tokenizer.json (+ tokenizer_config.json).
         Encode: a JSON string -> a JSON array of ids on one line (no BOS or EOS added; special-token strings in
         the text become their ids). --decode: a JSON array of ids -> a JSON string (special tokens kept).
chat-render renders CONV.json ({"messages": [...], "tools": [...]}, OpenAI layout; tools go to the first system
         message) exactly as DeepSeek's reference encoder (BOS included, nothing appended; thinking mode unless
         --no-thinking); --ids prints its ids as a JSON array instead.
chat-parse reads a generated completion on stdin and prints {"reasoning_content", "content", "tool_calls":
         [{"name", "arguments": {...}}]}; thinking mode when the text holds </think> unless --thinking or
         --no-thinking says; lenient unless --strict (DeepSeek's reference grammar).
synth-envs generates the synthetic general-agent environments (agent/synth_env.h): N trip-planning worlds
         (cities with hotels, restaurants, attractions) and M tasks per world, each raised to at most K rules
         (default 6) while the exact solver still finds a plan. Writes, atomically and deterministically in S,
         DIR/envs.jsonl (one world a line: id, seed, database), DIR/tasks.jsonl (env, id, question,
         constraints, tools, solution, cost, difficulty) and DIR/cold_start.jsonl (one solver trajectory per
         task: an SFT conversation with tool calls in thinking mode); prints the counts and the difficulty
         histogram. Environment "synthetic" reads them: params {"envs": "DIR/envs.jsonl"}, tasks from tasks.jsonl.
)";

int init_cmd(const std::vector<std::string>& args) {
    std::string config, out;
    std::vector<std::string> sets;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) throw ConfigError(absl::StrCat("dsrl_tool init: ", a, " needs a value"));
            return args[++i];
        };
        if (a == "--config") {
            config = value();
        } else if (a == "--out") {
            out = value();
        } else if (a == "--set") {
            sets.push_back(value());
        } else {
            throw ConfigError(absl::StrCat("dsrl_tool init: unknown argument '", a, "'\n", kUsage));
        }
    }
    if (config.empty() || out.empty()) {
        throw ConfigError(absl::StrCat("dsrl_tool init: --config and --out are required\n", kUsage));
    }
    const dsrl::JobConfig job = dsrl::load_job_config(config, sets);
    if (!job.model.path.empty()) {
        throw ConfigError(absl::StrCat("dsrl_tool init: ", config, " sets model.path (", job.model.path,
                                       "): the job starts from that checkpoint, there is nothing to initialize"));
    }
    const dsrl::dsa::Model m =
        dsrl::dsa::Model::random(job.model, dsrl::rng::derive_seed(job.run.seed, 0, "init"), at::kCPU);
    m.save(out);
    std::cout << "dsrl_tool init: wrote " << out << " (" << job.model.num_hidden_layers << " layers, hidden "
              << job.model.hidden_size << ", vocab " << job.model.vocab_size << ")\n";
    return 0;
}

std::map<std::string, std::string> parse_flags(const std::vector<std::string>& args,
                                               size_t first,
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
    const dsrl::ModelArch& c = reader.arch();
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
    dsrl::ModelRuntime job;
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
    for (size_t i = 0; i < out.topk.size(); ++i)
        tensors.emplace_back(absl::StrCat("topk_indices.", i), out.topk[i].cpu());
    dsrl::save_safetensors(output, tensors, {{"format", "pt"}, {"producer", "dsrl_tool forward"}});
    const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    std::cerr << absl::StrFormat("dsrl_tool: loaded %s in %.2fs, forward [%d, %d] in %.2fs, wrote %s\n", dir,
                                 secs(t0, t1), fin.input_ids.size(0), fin.input_ids.size(1), secs(t1, t2), output);
    return 0;
}

void print_sample(const dsrl::rollout::Sample& s, bool tokens, const dsrl::text::Tokenizer* given) {
    using dsrl::text::ByteTokenizer;
    const size_t n = s.response.size();
    std::cout << absl::StrFormat(
        "  sample %d: finish %s, policy version %d, prompt %d tokens, response %d tokens, reward %g, seed %d\n",
        s.sample_index, dsrl::rollout::finish_reason_name(s.finish), s.policy_version, s.prompt.size(), n, s.reward,
        s.seed);
    // The byte-level tokenizer decodes records of the demo's vocabulary (special tokens hidden); others need
    // --tokenizer (special tokens shown: </think> and tool-call markers matter there).
    // A multi-turn trajectory of a small vocabulary was made with the deepseek_v32 markers
    // (text/byte_chat_tokenizer.h).
    if (s.turns > 0 || !s.loss_mask.empty() || !s.trajectory.empty() || !s.env_error.empty()) {
        int64_t model = 0;
        for (size_t t = 0; t < n; ++t) model += s.trained(t);
        std::cout << absl::StrFormat(
            "    trajectory: %d turns, %d tool calls, %d context events, %d model + %d environment tokens%s\n", s.turns,
            s.tool_calls, s.context_events, model, static_cast<int64_t>(n) - model,
            s.env_error.empty() ? "" : absl::StrCat(", FAILED: ", s.env_error));
    }
    std::unique_ptr<dsrl::text::Tokenizer> bytes;
    const dsrl::text::Tokenizer* tok = given;
    if (tok == nullptr && s.vocab_size >= ByteTokenizer::kMinVocab && s.vocab_size <= 1024) {
        if (s.turns > 0 && s.vocab_size >= dsrl::text::ByteChatTokenizer::kMinVocab) {
            bytes = std::make_unique<dsrl::text::ByteChatTokenizer>(s.vocab_size);
        } else {
            bytes = std::make_unique<ByteTokenizer>(s.vocab_size);
        }
        tok = bytes.get();
    }
    if (tok != nullptr) {
        std::cout << "    text: \""
                  << absl::Utf8SafeCEscape(
                         tok->decode({s.response.begin(), s.response.end()}, /*keep_special=*/given != nullptr))
                  << "\"\n";
    } else {
        std::cout << "    ids:";
        for (const int32_t id : s.response) std::cout << " " << id;
        std::cout << "\n";
    }
    std::string logprob = "-";
    if (!s.logprobs.empty()) {
        double sum = 0;
        for (const float lp : s.logprobs) sum += lp;
        logprob = absl::StrFormat("%.4f", sum / static_cast<double>(s.logprobs.size()));
    }
    std::string kept = "not recorded";
    if (!s.kept.empty()) {
        int64_t total = 0, max = 0, bytes = 0;
        for (const auto& k : s.kept) {
            total += k.size();
            max = std::max(max, k.size());
            bytes += static_cast<int64_t>(k.bytes().size());
        }
        const auto count = static_cast<double>(s.kept.size());
        kept = absl::StrFormat("size mean %.1f, max %d (of %d), %.2f bytes/token", total / count, max, s.vocab_size,
                               bytes / count);
    }
    const std::string routes =
        s.num_tokens() > 0 && s.num_moe_layers > 0
            ? absl::StrFormat("%d layers x top-%d, %.2f bytes/token", s.num_moe_layers, s.route_top_k,
                              static_cast<double>(s.routes.size()) / static_cast<double>(s.num_tokens()))
            : std::string("none");
    // Keep-indexer: the coded sets over every position (also the implicit ones before the sparse regime).
    const std::string indexer =
        s.indexer.empty()
            ? std::string("not recorded")
            : absl::StrFormat("%d layers x top-%d, %.2f bytes/token (%.3f per token and layer)", s.indexer.size(),
                              s.indexer_topk,
                              static_cast<double>(s.indexer_bytes()) / static_cast<double>(s.num_tokens()),
                              static_cast<double>(s.indexer_bytes()) /
                                  static_cast<double>(s.num_tokens() * static_cast<int64_t>(s.indexer.size())));
    std::cout << "    log-prob mean " << logprob << "; kept sets: " << kept << "; routes: " << routes
              << "; indexer sets: " << indexer << "\n";
    if (!tokens) return;
    std::vector<at::Tensor> layer_routes;
    for (int32_t l = 0; l < s.num_moe_layers; ++l) layer_routes.push_back(s.route_tensor(l));
    for (size_t t = 0; t < n; ++t) {
        std::string line = absl::StrFormat("    token %4d: id %6d", t, s.response[t]);
        if (tok) absl::StrAppend(&line, " '", tok->token_string(s.response[t]), "'");
        absl::StrAppend(&line, " log-prob ", t < s.logprobs.size() ? absl::StrFormat("%.4f", s.logprobs[t]) : "-",
                        " kept ", t < s.kept.size() ? absl::StrCat(s.kept[t].size()) : "-");
        if (!layer_routes.empty()) absl::StrAppend(&line, " routes");
        const int64_t pos = static_cast<int64_t>(s.prompt.size() + t);
        for (const at::Tensor& r : layer_routes) {
            const int64_t* p = r.const_data_ptr<int64_t>() + pos * s.route_top_k;
            absl::StrAppend(&line, " [");
            for (int32_t j = 0; j < s.route_top_k; ++j) absl::StrAppend(&line, j ? " " : "", p[j]);
            absl::StrAppend(&line, "]");
        }
        std::cout << line << "\n";
    }
}

int rollouts(const std::vector<std::string>& args) {
    std::string file, tokenizer_dir;
    int64_t max_groups = -1;
    bool tokens = false;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--tokens") {
            tokens = true;
        } else if (a == "--tokenizer") {
            if (i + 1 >= args.size()) throw ConfigError("dsrl_tool rollouts: --tokenizer needs a directory");
            tokenizer_dir = args[++i];
        } else if (a == "--max-groups") {
            if (i + 1 >= args.size()) throw ConfigError("dsrl_tool rollouts: --max-groups needs a value");
            if (!absl::SimpleAtoi(args[++i], &max_groups) || max_groups < 0) {
                throw ConfigError(absl::StrCat("dsrl_tool rollouts: --max-groups must be a non-negative integer, got '",
                                               args[i], "'"));
            }
        } else if (a.rfind("--", 0) == 0 || !file.empty()) {
            throw ConfigError(absl::StrCat("dsrl_tool rollouts: unexpected argument '", a, "'\n", kUsage));
        } else {
            file = a;
        }
    }
    if (file.empty()) throw ConfigError(absl::StrCat("dsrl_tool rollouts: FILE is required\n", kUsage));
    const std::vector<dsrl::rollout::SampleGroup> groups = dsrl::rollout::read_groups_file(file);
    const std::unique_ptr<dsrl::text::Tokenizer> tok =
        tokenizer_dir.empty() ? nullptr : dsrl::text::HfTokenizer::load(tokenizer_dir);
    size_t num_samples = 0;
    for (const auto& g : groups) num_samples += g.samples.size();
    std::cout << file << ": " << groups.size() << " groups, " << num_samples << " samples\n";
    for (size_t g = 0; g < groups.size(); ++g) {
        if (max_groups >= 0 && static_cast<int64_t>(g) >= max_groups) {
            std::cout << "(" << groups.size() - g << " more groups not shown)\n";
            break;
        }
        const auto& group = groups[g];
        std::cout << "group " << g << ": domain '" << absl::Utf8SafeCEscape(group.domain) << "', prompt id "
                  << group.prompt_id << ", G " << group.samples.size() << "\n";
        for (const auto& s : group.samples) print_sample(s, tokens, tok.get());
    }
    return 0;
}

// dsrl_tool grpo-loss: dsrl's GRPO loss and its gradient on given per-token log-probs (SPEC §5), so another
// implementation can be checked against it.
int grpo_loss_cmd(const std::vector<std::string>& args) {
    std::string input, grad_output;
    std::vector<std::string> sets;
    double beta = 0.0;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (i + 1 >= args.size())
            throw ConfigError(absl::StrCat("dsrl_tool grpo-loss: ", a, " needs a value\n", kUsage));
        const std::string& v = args[++i];
        if (a == "--input") {
            input = v;
        } else if (a == "--grad-output") {
            grad_output = v;
        } else if (a == "--set") {
            if (v.rfind("grpo.", 0) != 0) {
                throw ConfigError(absl::StrCat("dsrl_tool grpo-loss: --set ", v, ": only grpo.* keys apply here"));
            }
            if (v.rfind("grpo.beta=", 0) == 0) {
                // The KL coefficient is per domain in a job; here one value applies to every sample.
                if (!absl::SimpleAtod(v.substr(10), &beta) || !(beta >= 0) || !std::isfinite(beta)) {
                    throw ConfigError(absl::StrCat("dsrl_tool grpo-loss: --set ", v, ": beta must be a number >= 0"));
                }
            } else {
                sets.push_back(v);
            }
        } else {
            throw ConfigError(absl::StrCat("dsrl_tool grpo-loss: unknown argument '", a, "'\n", kUsage));
        }
    }
    if (input.empty() || grad_output.empty()) {
        throw ConfigError(absl::StrCat("dsrl_tool grpo-loss: --input and --grad-output are required\n", kUsage));
    }
    const dsrl::JobConfig job = dsrl::load_job_config("", sets);
    const dsrl::SafetensorsFile in = dsrl::SafetensorsFile::open(input);
    const auto get = [&](const char* name, int64_t dim) {
        if (!in.contains(name)) throw dsrl::DataError(absl::StrCat(input, ": missing tensor '", name, "'"));
        const at::Tensor t = in.get(name);
        if (t.dim() != dim) {
            throw dsrl::DataError(
                absl::StrCat(input, ": tensor '", name, "' must have ", dim, " dimensions, got ", t.dim()));
        }
        return t;
    };
    const at::Tensor logp = get("logp", 2).to(at::kFloat).clone().requires_grad_(true);
    const at::Tensor rewards = get("rewards", 1).to(at::kFloat);
    const at::Tensor group = get("group", 1).to(at::kLong);
    const int64_t n = logp.size(0);
    for (const char* name : {"logp_old", "logp_ref", "valid"}) {
        if (get(name, 2).sizes() != logp.sizes()) {
            throw dsrl::DataError(absl::StrCat(input, ": tensor '", name, "' must have the shape of logp"));
        }
    }
    if (rewards.size(0) != n || group.size(0) != n) {
        throw dsrl::DataError(absl::StrCat(input, ": rewards and group must be [", n, "]"));
    }
    const dsrl::grpo::Advantages adv = dsrl::grpo::compute_advantages(rewards, group, job.grpo.adv_norm);
    const dsrl::grpo::LossInputs li{.logp = logp,
                                    .logp_old = get("logp_old", 2).to(at::kFloat),
                                    .logp_ref = get("logp_ref", 2).to(at::kFloat),
                                    .valid = get("valid", 2).to(at::kFloat),
                                    .adv = adv.adv,
                                    .contributes = adv.contributes,
                                    .beta = at::full({n}, beta, at::kFloat)};
    dsrl::grpo::LossOutput out = dsrl::grpo::grpo_loss(li, job.grpo.loss);
    out.loss.backward();
    dsrl::save_safetensors(grad_output, {{"grad_logp", logp.grad().contiguous()}},
                           {{"format", "pt"}, {"producer", "dsrl_tool grpo-loss"}});
    out.metrics["failed_samples"] = static_cast<double>(adv.failed_samples);
    out.metrics["dropped_groups"] = static_cast<double>(adv.dropped_groups);
    std::string json = absl::StrFormat("{\"loss\": %.9g", out.loss.item<double>());
    for (const auto& [k, v] : out.metrics) {
        if (k != "loss") absl::StrAppendFormat(&json, ", \"%s\": %.9g", k, v);
    }
    std::cout << json << "}\n";
    return 0;
}

int tokenize(const std::vector<std::string>& args) {
    std::string dir;
    bool decode = false;
    for (size_t i = 1; i < args.size(); ++i) {
        if (args[i] == "--decode") {
            decode = true;
        } else if (args[i] == "--tokenizer" && i + 1 < args.size()) {
            dir = args[++i];
        } else {
            throw ConfigError(
                absl::StrCat("dsrl_tool tokenize: unknown or incomplete argument '", args[i], "'\n", kUsage));
        }
    }
    if (dir.empty()) throw ConfigError(absl::StrCat("dsrl_tool tokenize: --tokenizer DIR is required\n", kUsage));
    const std::unique_ptr<dsrl::text::HfTokenizer> tok = dsrl::text::HfTokenizer::load(dir);
    std::string line;
    int64_t n = 0;
    while (std::getline(std::cin, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        nlohmann::json v;
        try {
            v = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
            throw dsrl::DataError(absl::StrCat("dsrl_tool tokenize: stdin line ", n, ": not JSON: ", e.what()));
        }
        if (decode) {
            if (!v.is_array()) {
                throw dsrl::DataError(absl::StrCat("dsrl_tool tokenize --decode: stdin line ", n,
                                                   ": expected a JSON array of ids, got ", v.type_name()));
            }
            std::vector<int64_t> ids;
            for (const auto& id : v) {
                if (!id.is_number_integer()) {
                    throw dsrl::DataError(absl::StrCat("dsrl_tool tokenize --decode: stdin line ", n,
                                                       ": ids must be integers, got ", id.dump()));
                }
                ids.push_back(id.get<int64_t>());
            }
            std::cout << nlohmann::json(tok->decode(ids, /*keep_special=*/true)).dump() << "\n";
        } else {
            if (!v.is_string()) {
                throw dsrl::DataError(absl::StrCat("dsrl_tool tokenize: stdin line ", n,
                                                   ": expected a JSON string, got ", v.type_name()));
            }
            std::cout << nlohmann::json(tok->encode(v.get<std::string>())).dump() << "\n";
        }
    }
    return 0;
}

struct ChatFlags {
    std::string tokenizer, format, input;
    int thinking = -1;  // -1: default
    bool ids = false, strict = false;
};

ChatFlags chat_flags(const std::vector<std::string>& args, bool render) {
    ChatFlags f;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        const bool has_value = i + 1 < args.size();
        if (a == "--tokenizer" && has_value) {
            f.tokenizer = args[++i];
        } else if (a == "--format" && has_value) {
            f.format = args[++i];
        } else if (render && a == "--input" && has_value) {
            f.input = args[++i];
        } else if (a == "--thinking" || a == "--no-thinking") {
            f.thinking = a == "--thinking";
        } else if (render && a == "--ids") {
            f.ids = true;
        } else if (!render && a == "--strict") {
            f.strict = true;
        } else {
            throw ConfigError(
                absl::StrCat("dsrl_tool ", args[0], ": unknown or incomplete argument '", a, "'\n", kUsage));
        }
    }
    if (f.tokenizer.empty()) throw ConfigError(absl::StrCat("dsrl_tool ", args[0], ": --tokenizer DIR is required"));
    if (f.format.empty())
        throw ConfigError(absl::StrCat("dsrl_tool ", args[0], ": --format is required (deepseek_v32)"));
    if (render && f.input.empty()) throw ConfigError("dsrl_tool chat-render: --input CONV.json is required");
    return f;
}

int chat_render(const std::vector<std::string>& args) {
    const ChatFlags f = chat_flags(args, /*render=*/true);
    const auto fmt = dsrl::text::make_chat_format(f.format);
    std::string text;
    try {
        text = dsrl::fs::read_file(f.input);
    } catch (const dsrl::fs::IoError& e) {
        throw ConfigError(absl::StrCat("dsrl_tool chat-render: --input ", f.input, ": cannot read: ", e.reason()));
    }
    dsrl::text::OrderedJson conv;
    try {
        conv = dsrl::text::OrderedJson::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw dsrl::DataError(absl::StrCat(f.input, ": not valid JSON: ", e.what()));
    }
    const auto segments = fmt->render(conv, {.thinking = f.thinking != 0});
    const std::string prompt = dsrl::text::join_segments(segments);
    if (f.ids) {
        const auto tok = dsrl::text::HfTokenizer::load(f.tokenizer);
        std::cout << nlohmann::json(tok->encode(prompt)).dump() << "\n";
    } else {
        std::cout << prompt;
    }
    return 0;
}

int chat_parse(const std::vector<std::string>& args) {
    const ChatFlags f = chat_flags(args, /*render=*/false);
    const auto fmt = dsrl::text::make_chat_format(f.format);
    if (!dsrl::fs::exists(f.tokenizer)) {
        throw ConfigError(absl::StrCat("dsrl_tool chat-parse: --tokenizer ", f.tokenizer, ": no such directory"));
    }
    const std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    const bool thinking = f.thinking >= 0 ? f.thinking == 1 : text.find("</think>") != std::string::npos;
    std::cout << fmt->parse(text, {.thinking = thinking}, f.strict).to_json().dump() << "\n";
    return 0;
}

int synth_envs(const std::map<std::string, std::string>& flags) {
    const auto number = [&](const std::string& key, int64_t min, const char* fallback) {
        const std::string& text =
            fallback != nullptr && !flags.count(key) ? std::string(fallback) : required(flags, key);
        int64_t v = 0;
        if (!absl::SimpleAtoi(text, &v) || v < min) {
            throw ConfigError(
                absl::StrCat("dsrl_tool synth-envs: --", key, " must be an integer >= ", min, ", got '", text, "'"));
        }
        return v;
    };
    dsrl::agent::synth::DatasetOptions opt;
    opt.num_envs = number("envs", 1, nullptr);
    opt.tasks_per_env = number("tasks-per-env", 1, nullptr);
    opt.task.max_difficulty = number("max-difficulty", 0, "6");
    const std::string& seed = required(flags, "seed");
    if (!absl::SimpleAtoi(seed, &opt.seed)) {
        throw ConfigError(
            absl::StrCat("dsrl_tool synth-envs: --seed must be a non-negative 64-bit integer, got '", seed, "'"));
    }
    const std::string& dir = required(flags, "out");
    const dsrl::agent::synth::Dataset data = dsrl::agent::synth::generate_dataset(opt);
    dsrl::agent::synth::write_dataset(dir, data);
    std::cout << dsrl::agent::synth::dataset_summary(data) << "; wrote " << dir << "/envs.jsonl, " << dir
              << "/tasks.jsonl, " << dir << "/cold_start.jsonl\n";
    return 0;
}

int run(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::cout << kUsage << dsrl::tools::kGenerateHelp;
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "info") return info(parse_flags(args, 1, {"model"}));
    if (args[0] == "init") return init_cmd(args);
    if (args[0] == "forward")
        return forward(parse_flags(args, 1, {"model", "input", "output", "device", "dtype", "path"}));
    if (args[0] == "rollouts") return rollouts(args);
    if (args[0] == "grpo-loss") return grpo_loss_cmd(args);
    if (args[0] == "tokenize") return tokenize(args);
    if (args[0] == "chat-render") return chat_render(args);
    if (args[0] == "chat-parse") return chat_parse(args);
    if (args[0] == "generate") return dsrl::tools::generate_main({args.begin() + 1, args.end()});
    if (args[0] == "synth-envs")
        return synth_envs(parse_flags(args, 1, {"out", "envs", "tasks-per-env", "seed", "max-difficulty"}));
    throw ConfigError(absl::StrCat("dsrl_tool: unknown command '", args[0], "'\n", kUsage));
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
