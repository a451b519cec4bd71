// libFuzzer harness: the JSON files a resume reads from a checkpoint directory (trainer/checkpoint.h) —
// state.json and cursors.rank0.json — through load_checkpoint, into a directory that otherwise holds a valid
// checkpoint of a tiny model (written once); the cursors then go through the readers the stages restore them with
// (int_cursor, data::restore_cursor); a third part is the checkpoint's manifest.json, checked by verify_checkpoint.
// The input is "state.json \0 cursors.rank0.json \0 manifest.json" (cursors "{}" and no manifest when a part is
// missing). Finding F1 (state.json counts given as JSON floats) is fixed: regressions/f1_float_step.
// Corpus: tests/fuzz/checkpoint_state/.
// docs/fuzzing.md.
#include <sys/stat.h>
#include <unistd.h>

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Fixture f;
    return dsrl::fuzz::run([&] {
        const std::string input = dsrl::fuzz::bytes_of(data, size);
        const size_t nul = input.find('\0');
        dsrl::fuzz::write_file(f.dir + "/state.json", input.substr(0, nul));
        const std::string rest = nul == std::string::npos ? "" : input.substr(nul + 1);
        const size_t nul2 = rest.find('\0');
        dsrl::fuzz::write_file(f.dir + "/cursors.rank0.json", nul == std::string::npos ? "{}" : rest.substr(0, nul2));
        const std::string manifest = f.dir + "/manifest.json";
        ::unlink(manifest.c_str());
        if (nul2 != std::string::npos) {
            dsrl::fuzz::write_file(manifest, rest.substr(nul2 + 1));
            bool legacy = false;
            (void)dsrl::trainer::verify_checkpoint(f.dir, nullptr, &legacy);  // a problem string, never a crash
        }
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
