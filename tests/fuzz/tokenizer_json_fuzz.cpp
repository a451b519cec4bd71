// libFuzzer harness: a Hugging Face tokenizer.json (text/hf_tokenizer.h) through HfTokenizer::load from a
// directory, then used (none of which may throw once it loaded): a short text encoded with and without special tokens,
// decoded back, token strings. The input is "tokenizer.json \0 text \0 tokenizer_config.json" (the parts after the
// first and second NUL optional; the text at most 256 bytes). Corpus: tests/fuzz/tokenizer_json/. docs/fuzzing.md.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "text/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    [&] {
        const std::string input = dsrl::fuzz::bytes_of(data, size);
        const size_t a = input.find('\0');
        const size_t b = a == std::string::npos ? a : input.find('\0', a + 1);
        const std::string json = input.substr(0, a);
        const std::string text =
            a == std::string::npos ? "Hello, world! 1234 <think>" : input.substr(a + 1, b - a - 1).substr(0, 256);
        const std::string dir = dsrl::fuzz::temp_dir();
        dsrl::fuzz::write_file(dir + "/tokenizer.json", json);
        if (b != std::string::npos) {
            dsrl::fuzz::write_file(dir + "/tokenizer_config.json", input.substr(b + 1));
        } else {
            std::remove((dir + "/tokenizer_config.json").c_str());
        }
        std::unique_ptr<dsrl::text::HfTokenizer> tok;
        dsrl::fuzz::run([&] { tok = dsrl::text::HfTokenizer::load(dir); });
        if (tok == nullptr) return;
        // A loaded tokenizer must encode any text and decode its own ids without throwing.
        const std::vector<int64_t> ids = tok->encode(text);
        (void)tok->encode(text, /*add_special_tokens=*/true);
        (void)tok->decode(ids, /*keep_special=*/true);
        (void)tok->decode(ids);
        for (const int64_t id : ids) (void)tok->token_string(id);
        for (const int64_t id : {tok->bos_id(), tok->eos_id(), tok->pad_id()}) {
            if (id >= 0) (void)tok->token_string(id);
        }
    }();
    return 0;
}
