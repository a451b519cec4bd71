// libFuzzer harness: a YAML job config (trainer/config.h) through load_job_config, as dsrl_train --config reads it;
// lines of the form "#set key=value" (YAML comments) are passed as --set overrides too. Any YAML must load or be a
// ConfigError. A loaded config must also load again from its resolved YAML (what --print-config prints and a
// checkpoint's state.json keeps). Corpus: tests/fuzz/job_config/. docs/fuzzing.md.
#include <cstdint>
#include <string>
#include <vector>

#include <absl/strings/match.h>
#include <absl/strings/str_split.h>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    return dsrl::fuzz::run([&] {
        const std::string text = dsrl::fuzz::bytes_of(data, size);
        std::vector<std::string> overrides;
        for (const absl::string_view line : absl::StrSplit(text, '\n')) {
            if (absl::StartsWith(line, "#set ") && overrides.size() < 4) overrides.emplace_back(line.substr(5));
        }
        const std::string path = dsrl::fuzz::temp_dir() + "/job.yaml";
        dsrl::fuzz::write_file(path, text);
        dsrl::JobConfig cfg = dsrl::load_job_config(path, overrides);
        const std::string resolved = dsrl::to_yaml(cfg);
        dsrl::fuzz::write_file(path, resolved);
        dsrl::JobConfig again;
        try {
            again = dsrl::load_job_config(path, {});
        } catch (const dsrl::ConfigError& e) {
            std::fprintf(stderr, "job config: the resolved YAML does not load again: %s\n%s\n", e.what(),
                         resolved.c_str());
            std::abort();
        }
        if (dsrl::to_yaml(again) != resolved) {
            std::fprintf(stderr, "job config: to_yaml(load(to_yaml(cfg))) != to_yaml(cfg)\n");
            std::abort();
        }
    });
}
