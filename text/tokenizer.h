// Tokenizers (SPEC §4): the interface rollout, rewards and SFT use, and the byte-level tokenizer of the
// embedded default job. A Hugging Face tokenizer.json implementation can be added behind the same interface.
//
//   auto tok = make_tokenizer(job.model.path, job.model.vocab_size);   // byte-level unless the checkpoint has one
//   std::vector<int64_t> ids = tok->apply_chat({{"user", "2+3?"}}, /*add_generation_prompt=*/true);
//   std::string text = tok->decode(response_ids);       // special tokens skipped
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsrl::text {

class ChatFormat;
struct ChatOptions;

struct ChatMessage {
    std::string role;  ///< "system", "user" or "assistant"
    std::string content;
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    virtual int64_t vocab_size() const = 0;
    virtual int64_t bos_id() const = 0;
    virtual int64_t eos_id() const = 0;
    virtual int64_t pad_id() const = 0;
    /// Text -> ids (no special tokens added).
    virtual std::vector<int64_t> encode(const std::string& text) const = 0;
    /// Ids -> text; special tokens are skipped unless `keep_special`. Ids outside the vocabulary are a
    /// DataError naming the id.
    virtual std::string decode(const std::vector<int64_t>& ids, bool keep_special = false) const = 0;
    /// One token as printable text (specials by name, e.g. "<eos>"; non-printable bytes as "\xNN").
    virtual std::string token_string(int64_t id) const = 0;
    virtual bool is_special(int64_t id) const = 0;
    /// BOS, then for each message its role token, its content and <eos>-terminated end-of-turn; with
    /// `add_generation_prompt` the assistant role token follows so the model continues as the assistant.
    /// An unknown role is a DataError.
    virtual std::vector<int64_t> apply_chat(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt) const = 0;
    /// The chat format whole conversations (tools, tool calls, reasoning) render with (text/conversation.h), and
    /// its options in `*options`; nullptr when the tokenizer has only apply_chat's fixed template (byte-level).
    virtual const ChatFormat* chat_format(ChatOptions* options) const {
        (void)options;
        return nullptr;
    }
};

/// Byte-level tokenizer: ids 0..15 are specials (0 <bos>, 1 <eos>, 2 <pad>, 3 <|system|>, 4 <|user|>,
/// 5 <|assistant|>, 6 <|end|>, 7..15 reserved), byte b is id 16 + b. Needs vocab_size >= 272 (the default
/// model has 320; ids above 271 are unused and decode as "<unused_N>").
class ByteTokenizer final : public Tokenizer {
public:
    static constexpr int64_t kBos = 0, kEos = 1, kPad = 2, kSystem = 3, kUser = 4, kAssistant = 5, kEnd = 6;
    static constexpr int64_t kByteOffset = 16;
    static constexpr int64_t kMinVocab = kByteOffset + 256;
    /// Throws ConfigError when vocab_size < kMinVocab.
    explicit ByteTokenizer(int64_t vocab_size);
    int64_t vocab_size() const override { return vocab_size_; }
    int64_t bos_id() const override { return kBos; }
    int64_t eos_id() const override { return kEos; }
    int64_t pad_id() const override { return kPad; }
    std::vector<int64_t> encode(const std::string& text) const override;
    std::string decode(const std::vector<int64_t>& ids, bool keep_special = false) const override;
    std::string token_string(int64_t id) const override;
    bool is_special(int64_t id) const override;
    std::vector<int64_t> apply_chat(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const override;

private:
    int64_t vocab_size_;
};

/// Which chat format a tokenizer renders conversations with (model.chat_format, model.thinking).
struct ChatChoice {
    std::string format = "auto";  ///< auto, byte or deepseek_v32
    bool thinking = true;
};

/// The tokenizer of a model (`model_path`: its checkpoint directory, "" for a random init): its tokenizer.json
/// (text/hf_tokenizer.h) when it ships one, else the byte-level tokenizer (vocab_size >= 272). The chat format:
/// deepseek_v32 when chosen, or under auto for a checkpoint whose config.json says model_type deepseek_v32; for the
/// byte-level tokenizer its own template under auto and byte, and under deepseek_v32 the byte-level tokenizer with
/// that format's markers as added tokens (ByteChatTokenizer, text/byte_chat_tokenizer.h; vocab_size >= 291). A
/// choice that does not fit the tokenizer (byte with a tokenizer.json) is a ConfigError.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& model_path,
                                          int64_t vocab_size,
                                          const ChatChoice& chat = {});

}  // namespace dsrl::text
