// libFuzzer harness: a JSONL prompt file (data/prompts.h) through JsonlPromptSource::open, both as prompt rows
// ({"prompt", "answer", ...}) and as SFT conversation rows (OpenAI-style {"messages", "tools"}); every item is then
// rendered as the trainer does before a step: check_conversations and prompt_ids with the deepseek_v32 chat format
// (over the byte-level tokenizer) and with the byte template. An input starting with "synthetic:" is a `data` spec
// for make_prompt_source instead. Corpus: tests/fuzz/prompt_rows/. docs/fuzzing.md.
#include <cstdint>
#include <memory>
#include <string>

#include "data/prompts.h"
#include "tests/fuzz/fuzz_util.h"
#include "text/chat_format.h"
#include "text/tokenizer.h"

namespace {

// The byte-level tokenizer with the deepseek_v32 chat format (a real checkpoint pairs it with its tokenizer.json).
class DeepSeekBytes final : public dsrl::text::Tokenizer {
public:
    int64_t vocab_size() const override { return bytes_.vocab_size(); }
    int64_t bos_id() const override { return bytes_.bos_id(); }
    int64_t eos_id() const override { return bytes_.eos_id(); }
    int64_t pad_id() const override { return bytes_.pad_id(); }
    std::vector<int64_t> encode(const std::string& text) const override { return bytes_.encode(text); }
    std::string decode(const std::vector<int64_t>& ids, bool keep_special) const override {
        return bytes_.decode(ids, keep_special);
    }
    std::string token_string(int64_t id) const override { return bytes_.token_string(id); }
    bool is_special(int64_t id) const override { return bytes_.is_special(id); }
    std::vector<int64_t> apply_chat(const std::vector<dsrl::text::ChatMessage>& messages,
                                    bool add_generation_prompt) const override {
        return bytes_.apply_chat(messages, add_generation_prompt);
    }
    const dsrl::text::ChatFormat* chat_format(dsrl::text::ChatOptions* options) const override {
        if (options != nullptr) *options = {};
        return format_.get();
    }

private:
    dsrl::text::ByteTokenizer bytes_{320};
    std::unique_ptr<dsrl::text::ChatFormat> format_ = dsrl::text::make_chat_format("deepseek_v32");
};

void use(const dsrl::data::PromptSource& source, dsrl::data::Rows rows) {
    static const DeepSeekBytes deepseek;
    static const dsrl::text::ByteTokenizer bytes(320);
    for (const dsrl::text::Tokenizer* tokenizer :
         {static_cast<const dsrl::text::Tokenizer*>(&deepseek), static_cast<const dsrl::text::Tokenizer*>(&bytes)}) {
        dsrl::fuzz::run([&] {
            dsrl::data::check_conversations(source, *tokenizer, rows);
            for (int64_t i = 0; i < source.size(); ++i) {
                const dsrl::data::PromptItem item = source.get(i);
                (void)dsrl::data::chat_of(item);
                (void)dsrl::data::prompt_ids(*tokenizer, item, source.name());
            }
        });
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text = dsrl::fuzz::bytes_of(data, size);
    if (text.rfind("synthetic:", 0) == 0) {
        return dsrl::fuzz::run([&] {
            const auto source = dsrl::data::make_prompt_source(text, "fuzz", "");
            for (int64_t i = 0; i < 4; ++i) (void)source->get(i);
            dsrl::data::PromptSampler sampler(source, 1);
            (void)sampler.next();
        });
    }
    const std::string path = dsrl::fuzz::temp_dir() + "/prompts.jsonl";
    dsrl::fuzz::write_file(path, text);
    for (const dsrl::data::Rows rows : {dsrl::data::Rows::kPrompts, dsrl::data::Rows::kConversations}) {
        dsrl::fuzz::run([&] { use(*dsrl::data::make_prompt_source(path, "fuzz", "", rows), rows); });
    }
    return 0;
}
