#include "tools/generate.h"

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/Device.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/precision.h"
#include "data/prompts.h"
#include "dsa/model.h"
#include "rollout/generator.h"
#include "rollout/record.h"
#include "text/chat_format.h"
#include "text/tokenizer.h"
#include "trainer/config.h"

namespace dsrl::tools {

const char* const kGenerateHelp =
    R"(generate samples completions from the checkpoint DIR (config.json + safetensors, with its tokenizer.json and
         chat format, model.chat_format auto) for every row of PROMPTS.jsonl: {"messages": [...], "tools": [...]}
         (OpenAI layout, ending with a user/developer message or tool results) or {"prompt": "..."}; optional
         "id". OUT.jsonl gets one row per sample, in input order: {"id", "sample", "prompt_tokens", "text" (the
         generated text, special tokens kept), "reasoning_content", "content", "tool_calls" (parsed leniently by
         the chat format), "finish_reason" (eos, stop, length, context), "completion_tokens", "token_ids",
         "logprobs", "cumulative_logprob"}; written atomically when all are done. --set takes rollout.* keys
         (group_size = samples per prompt, default 1 here; max_new_tokens, default 512 here; temperature, top_p,
         top_k, min_p, stop, max_batch_size), model.dtype, model.impl, model.chat_format, model.thinking,
         run.seed and run.device. --records FILE also writes the samples as a rollout record file (log-probs,
         kept sets, routing paths) for `dsrl_tool rollouts`.
)";

namespace {

struct GenerateArgs {
    std::string model, input, output, records;
    std::vector<std::string> sets;
};

GenerateArgs parse_args(const std::vector<std::string>& args) {
    GenerateArgs g;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {
            throw ConfigError(absl::StrCat("dsrl_tool generate: ", a, " needs a value"));
        }
        const std::string& v = args[++i];
        if (a == "--model") {
            g.model = v;
        } else if (a == "--input") {
            g.input = v;
        } else if (a == "--output") {
            g.output = v;
        } else if (a == "--records") {
            g.records = v;
        } else if (a == "--set") {
            const bool allowed =
                v.rfind("rollout.", 0) == 0 || v.rfind("run.seed=", 0) == 0 || v.rfind("run.device=", 0) == 0 || [&] {
                    for (const char* k : {"dtype", "impl", "chat_format", "thinking"}) {
                        if (v.rfind(absl::StrCat("model.", k, "="), 0) == 0) return true;
                    }
                    return false;
                }();
            if (!allowed) {
                throw ConfigError(absl::StrCat("dsrl_tool generate: --set ", v,
                                               ": only rollout.*, model.dtype, model.impl, model.chat_format, "
                                               "model.thinking, run.seed and run.device apply here"));
            }
            g.sets.push_back(v);
        } else {
            throw ConfigError(absl::StrCat("dsrl_tool generate: unknown argument '", a, "'"));
        }
    }
    for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--model DIR", &g.model},
                                      {"--input PROMPTS.jsonl", &g.input},
                                      {"--output OUT.jsonl", &g.output}}) {
        if (value->empty()) throw ConfigError(absl::StrCat("dsrl_tool generate: ", flag, " is required"));
    }
    if (!fs::is_dir(g.model)) {
        throw ConfigError(absl::StrCat("dsrl_tool generate: --model ", g.model, ": no such checkpoint directory"));
    }
    return g;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int generate_main(const std::vector<std::string>& args) {
    const GenerateArgs g = parse_args(args);
    std::vector<std::string> sets{"rollout.group_size=1", "rollout.max_new_tokens=512"};
    sets.insert(sets.end(), g.sets.begin(), g.sets.end());
    JobConfig job = load_job_config("", sets);

    // Everything that can be wrong with the inputs is found before the model loads.
    const auto source = data::JsonlPromptSource::open(g.input, "generate", data::Rows::kPrompts);
    const bool cuda = job.run.device == "cuda" || (job.run.device == "auto" && at::hasCUDA());
    if (job.run.device == "cuda" && !at::hasCUDA()) {
        throw ConfigError("dsrl_tool generate: run.device=cuda, but no CUDA device is available");
    }
    const c10::Device device = cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
    const auto t0 = std::chrono::steady_clock::now();
    const dsa::Model model = dsa::Model::load(g.model, job.model, device);
    const std::unique_ptr<text::Tokenizer> tok = text::make_tokenizer(
        g.model, model.config().vocab_size, {.format = job.model.chat_format, .thinking = job.model.thinking});
    text::ChatOptions chat_options;
    const text::ChatFormat* format = tok->chat_format(&chat_options);
    std::cerr << absl::StrFormat("dsrl_tool generate: loaded %s in %.1fs (%s, chat format %s)\n", g.model,
                                 seconds_since(t0), device.str(), format ? format->name() : "byte template");

    std::vector<data::PromptItem> items;
    std::vector<rollout::Prompt> prompts;
    for (int64_t i = 0; i < source->size(); ++i) {
        data::PromptItem item = source->get(i);
        const std::vector<int64_t> ids = data::prompt_ids(*tok, item, g.input);
        prompts.push_back({"generate", item.id, std::vector<int32_t>(ids.begin(), ids.end())});
        items.push_back(std::move(item));
    }

    const RolloutConfig& ro = job.rollout;
    const rollout::GenerateOptions opt{.sampling = ro.sampling,
                                       .max_new_tokens = ro.max_new_tokens,
                                       .stop = ro.stop,
                                       .max_batch_size = ro.max_batch_size,
                                       .record_kept = !g.records.empty(),
                                       .record_routes = !g.records.empty(),
                                       .engine = ro.engine};
    at::NoGradGuard no_grad;
    const AutocastScope amp(device, /*enabled=*/device.is_cuda() && job.model.dtype == DType::kFloat32);
    // Prompts go in chunks (of about one batch for the static engine, eight for the continuous one, which keeps its
    // batch full within a chunk), so progress shows on long inputs; the samples of a prompt depend only on (run.seed,
    // its id, the sample index), never on the chunking.
    const int64_t batches = ro.engine.kind == "continuous" ? 8 : 1;
    const int64_t chunk = std::max<int64_t>(1, batches * ro.max_batch_size / std::max<int64_t>(1, ro.group_size));
    std::vector<rollout::SampleGroup> groups;
    rollout::GenerationStats total;
    const auto t1 = std::chrono::steady_clock::now();
    for (size_t begin = 0; begin < prompts.size(); begin += static_cast<size_t>(chunk)) {
        const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(chunk));
        const std::vector<rollout::Prompt> part(prompts.begin() + static_cast<std::ptrdiff_t>(begin),
                                                prompts.begin() + static_cast<std::ptrdiff_t>(end));
        rollout::GenerationStats stats;
        for (rollout::SampleGroup& grp : rollout::generate_groups(model, *tok, part, ro.group_size, opt,
                                                                  static_cast<uint64_t>(job.run.seed), &stats)) {
            groups.push_back(std::move(grp));
        }
        total.generated_tokens += stats.generated_tokens;
        total.prompt_tokens += stats.prompt_tokens;
        const double secs = seconds_since(t1);
        std::cerr << absl::StrFormat("dsrl_tool generate: %d/%d prompts, %d tokens generated, %.1f tokens/s\n", end,
                                     prompts.size(), total.generated_tokens,
                                     secs > 0 ? static_cast<double>(total.generated_tokens) / secs : 0.0);
    }

    std::string out;
    for (size_t p = 0; p < groups.size(); ++p) {
        for (const rollout::Sample& s : groups[p].samples) {
            const std::vector<int64_t> ids(s.response.begin(), s.response.end());
            text::OrderedJson row = text::OrderedJson::object();
            row["id"] = items[p].id;
            row["sample"] = s.sample_index;
            row["prompt_tokens"] = s.prompt.size();
            const std::string text = tok->decode(ids, /*keep_special=*/true);
            row["text"] = text;
            if (format != nullptr) {
                const text::OrderedJson parsed = format->parse(text, chat_options, /*strict=*/false).to_json();
                for (const auto& [k, v] : parsed.items()) row[k] = v;
            } else {
                row["reasoning_content"] = "";
                row["content"] = tok->decode(ids, /*keep_special=*/false);
                row["tool_calls"] = text::OrderedJson::array();
            }
            row["finish_reason"] = rollout::finish_reason_name(s.finish);
            row["completion_tokens"] = s.response.size();
            row["token_ids"] = s.response;
            double sum = 0;
            text::OrderedJson lps = text::OrderedJson::array();
            for (const float lp : s.logprobs) {
                lps.push_back(static_cast<double>(lp));
                sum += lp;
            }
            row["logprobs"] = std::move(lps);
            row["cumulative_logprob"] = sum;
            out += row.dump(-1, ' ', /*ensure_ascii=*/false, text::OrderedJson::error_handler_t::replace);
            out += '\n';
        }
    }
    fs::write_file_atomic(g.output, {out});
    if (!g.records.empty()) rollout::write_groups_file(g.records, groups);
    std::cerr << absl::StrFormat("dsrl_tool generate: wrote %d samples of %d prompts to %s%s in %.1fs\n",
                                 prompts.size() * static_cast<size_t>(ro.group_size), prompts.size(), g.output,
                                 g.records.empty() ? "" : " and " + g.records, seconds_since(t1));
    return 0;
}

}  // namespace dsrl::tools
