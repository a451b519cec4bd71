#include "text/tokenizer.h"

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include "core/error.h"
#include "core/fs.h"
#include "text/byte_chat_tokenizer.h"
#include "text/chat_format.h"
#include "text/hf_tokenizer.h"

#include <nlohmann/json.hpp>

namespace dsrl::text {
namespace {

// Names of ids 0..6; ids 7..15 are "<reserved_N>".
constexpr const char* kSpecialNames[] = {"<bos>",    "<eos>",         "<pad>",  "<|system|>",
                                         "<|user|>", "<|assistant|>", "<|end|>"};
constexpr int64_t kNumNamed = sizeof(kSpecialNames) / sizeof(kSpecialNames[0]);

}  // namespace

ByteTokenizer::ByteTokenizer(int64_t vocab_size) : vocab_size_(vocab_size) {
    if (vocab_size < kMinVocab) {
        throw ConfigError(absl::StrCat("ByteTokenizer: model.vocab_size must be at least ", kMinVocab, " (",
                                       kByteOffset, " special tokens + 256 bytes), got ", vocab_size));
    }
}

std::vector<int64_t> ByteTokenizer::encode(const std::string& text) const {
    std::vector<int64_t> ids;
    ids.reserve(text.size());
    for (const char c : text) ids.push_back(kByteOffset + static_cast<unsigned char>(c));
    return ids;
}

// Ids above the byte range (272 .. vocab-1) are not special: no chat template produces them, but a sampled
// one must stay visible in the text a reward sees, so decode always writes "<unused_N>" for them.
std::string ByteTokenizer::decode(const std::vector<int64_t>& ids, bool keep_special) const {
    std::string out;
    out.reserve(ids.size());
    for (const int64_t id : ids) {
        if (id < 0 || id >= vocab_size_) {
            throw DataError(absl::StrCat("ByteTokenizer::decode: token id ", id, " is outside the vocabulary [0, ",
                                         vocab_size_, ")"));
        }
        if (id >= kByteOffset && id < kMinVocab) {
            out.push_back(static_cast<char>(id - kByteOffset));
        } else if (id >= kMinVocab || keep_special) {
            out += token_string(id);
        }
    }
    return out;
}

std::string ByteTokenizer::token_string(int64_t id) const {
    if (id < 0 || id >= vocab_size_) {
        throw DataError(absl::StrCat("ByteTokenizer::token_string: token id ", id, " is outside the vocabulary [0, ",
                                     vocab_size_, ")"));
    }
    if (id < kNumNamed) return kSpecialNames[id];
    if (id < kByteOffset) return absl::StrCat("<reserved_", id, ">");
    if (id >= kMinVocab) return absl::StrCat("<unused_", id, ">");
    const auto b = static_cast<unsigned char>(id - kByteOffset);
    if (b >= 0x20 && b < 0x7F) return std::string(1, static_cast<char>(b));
    return absl::StrFormat("\\x%02X", b);
}

bool ByteTokenizer::is_special(int64_t id) const { return id >= 0 && id < kByteOffset; }

// Layout: <bos> then per message <|role|> content <|end|> <eos>. The turn ends with <eos> so that a response
// generated after the assistant role token stops at the generator's EOS; <|end|> before it marks the turn.
std::vector<int64_t> ByteTokenizer::apply_chat(const std::vector<ChatMessage>& messages,
                                               bool add_generation_prompt) const {
    std::vector<int64_t> ids{kBos};
    for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        int64_t role;
        if (m.role == "system") {
            role = kSystem;
        } else if (m.role == "user") {
            role = kUser;
        } else if (m.role == "assistant") {
            role = kAssistant;
        } else {
            throw DataError(absl::StrCat("ByteTokenizer::apply_chat: message ", i, " has unknown role '", m.role,
                                         "' (expected system, user or assistant)"));
        }
        ids.push_back(role);
        for (const char c : m.content) ids.push_back(kByteOffset + static_cast<unsigned char>(c));
        ids.push_back(kEnd);
        ids.push_back(kEos);
    }
    if (add_generation_prompt) ids.push_back(kAssistant);
    return ids;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& model_path, int64_t vocab_size, const ChatChoice& chat) {
    if (chat.format != "auto" && chat.format != "byte" && chat.format != "deepseek_v32") {
        throw ConfigError(
            absl::StrCat("model.chat_format: '", chat.format, "' is not known (auto, byte, deepseek_v32)"));
    }
    if (!model_path.empty() && fs::exists(fs::join(model_path, "tokenizer.json"))) {
        std::unique_ptr<HfTokenizer> tok = HfTokenizer::load(model_path);
        if (tok->vocab_size() > vocab_size) {
            throw ConfigError(absl::StrCat(fs::join(model_path, "tokenizer.json"), " has ", tok->vocab_size(),
                                           " token ids but the model's vocab_size is ", vocab_size));
        }
        std::string format = chat.format;
        if (format == "auto") {
            format = "";
            const std::string config = fs::join(model_path, "config.json");
            if (fs::exists(config)) {
                try {
                    const auto j = nlohmann::json::parse(fs::read_file(config));
                    if (j.is_object() && j.value("model_type", "") == "deepseek_v32") format = "deepseek_v32";
                } catch (const nlohmann::json::exception&) {
                    // the checkpoint reader reports a malformed config.json, naming it
                }
            }
        } else if (format == "byte") {
            throw ConfigError(absl::StrCat("model.chat_format: byte is the byte-level tokenizer's template, but ",
                                           model_path, " ships a tokenizer.json; use auto or deepseek_v32"));
        }
        if (!format.empty()) tok->set_chat_format(make_chat_format(format), {.thinking = chat.thinking});
        return tok;
    }
    // No tokenizer.json: the byte-level tokenizer, with the deepseek_v32 markers as added tokens when that format is
    // chosen (text/byte_chat_tokenizer.h).
    if (chat.format == "deepseek_v32") return std::make_unique<ByteChatTokenizer>(vocab_size, chat.thinking);
    return std::make_unique<ByteTokenizer>(vocab_size);
}

}  // namespace dsrl::text
