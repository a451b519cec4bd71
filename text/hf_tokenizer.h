// A Hugging Face tokenizer.json behind the Tokenizer interface (SPEC §4; ../shared/DSV32_FORMAT.md §A):
// added tokens (special or not) matched leftmost-longest in the raw text — normalized ones in the normalized
// text — before the pipeline; then the normalizer, the pre-tokenizer and the BPE model (text/pipeline.h,
// text/bpe.h); decoding through the ByteLevel decoder with invalid UTF-8 replaced. Same ids as Python
// `tokenizers` on any text (tests/text/tokenizer_oracle.py); encode() adds no BOS/EOS, encode(text, true) adds
// what the post-processor adds (Python's encode(text, add_special_tokens=True)).
//
//   auto tok = HfTokenizer::load("/models/DeepSeek-V3.2");   // the directory's tokenizer.json (+
//   tokenizer_config.json) tok->encode("Hello, world!");                           // {19923, 14, 2058, 3}
//
// BOS, EOS and PAD come from tokenizer_config.json (bos_token, eos_token, pad_token) when it names them; -1
// otherwise. apply_chat renders with the chat format make_tokenizer chose (model.chat_format); without one it is a
// ConfigError saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "text/bpe.h"
#include "text/chat_format.h"
#include "text/pipeline.h"
#include "text/tokenizer.h"

namespace dsrl::text {

struct AddedToken {
    int64_t id = 0;
    std::string content;
    bool special = false;
    bool normalized = false;
    bool lstrip = false;
    bool rstrip = false;
    bool single_word = false;
};

class HfTokenizer final : public Tokenizer {
public:
    /// `path`: a tokenizer.json file or a directory holding one (and optionally tokenizer_config.json).
    /// ConfigError naming the file and field for a malformed or unsupported file.
    static std::unique_ptr<HfTokenizer> load(const std::string& path);

    int64_t vocab_size() const override { return size_; }
    int64_t bos_id() const override { return bos_; }
    int64_t eos_id() const override { return eos_; }
    int64_t pad_id() const override { return pad_; }
    /// encode(text, false): what the Tokenizer interface promises, no special tokens added.
    std::vector<int64_t> encode(const std::string& text) const override;
    /// Python `tokenizers`' encode(text, add_special_tokens) for one sequence: with true, the post_processor's
    /// special tokens (TemplateProcessing's "single" template, BertProcessing / RobertaProcessing cls + sep, a
    /// Sequence of them; ByteLevel adds none). DeepSeek's prompts carry BOS as text: use false for them.
    std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const;
    std::string decode(const std::vector<int64_t>& ids, bool keep_special = false) const override;
    std::string token_string(int64_t id) const override;
    bool is_special(int64_t id) const override;
    std::vector<int64_t> apply_chat(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const override;

    /// The chat format apply_chat renders with (make_tokenizer sets it from model.chat_format).
    void set_chat_format(std::unique_ptr<ChatFormat> format, const ChatOptions& options);
    const ChatFormat* chat_format(ChatOptions* options) const override {
        if (options != nullptr) *options = chat_options_;
        return chat_.get();
    }

    const std::vector<AddedToken>& added_tokens() const { return added_; }
    /// The id of a token string (added or in the model's vocabulary), -1 when absent.
    int64_t token_id(const std::string& token) const;

private:
    HfTokenizer() = default;
    // Splits `text` at the added tokens of one kind (normalized or not), leftmost-longest; appends the ids of
    // matches and calls `rest` for the text between them.
    template <class Rest>
    void split_added(const std::string& text, bool normalized, std::vector<int64_t>& out, Rest&& rest) const;
    void encode_plain(const std::string& text, std::vector<int64_t>& out) const;

    std::string file_;
    std::unique_ptr<Normalizer> normalizer_;
    std::unique_ptr<PreTokenizer> pre_tokenizer_;
    std::unique_ptr<Bpe> model_;
    std::unique_ptr<PostProcessor> post_;  // nullptr: none
    bool post_without_special_ = false;    // the post-processor changes ids even without special tokens
    std::vector<AddedToken> added_;
    std::vector<int32_t> added_index_;  // id -> index into added_, -1 when not an added token
    // Tries of added-token contents (one for raw text, one for normalized text): node -> (byte -> child).
    struct Trie {
        std::vector<absl::flat_hash_map<unsigned char, int32_t>> next{1};
        std::vector<int32_t> token{-1};  // index into added_ ending at this node
    };
    Trie raw_trie_, normalized_trie_;
    bool byte_level_decoder_ = false;
    int64_t size_ = 0;
    int64_t bos_ = -1, eos_ = -1, pad_ = -1;
    std::unique_ptr<ChatFormat> chat_;
    ChatOptions chat_options_;
};

}  // namespace dsrl::text
