// The text stages of a Hugging Face tokenizer.json around its model (SPEC §4; ../shared/DSV32_FORMAT.md §A):
// normalizers (NFC, NFD, NFKC, NFKD, Lowercase, Sequence), pre-tokenizers (Split with a PCRE2 regex or a literal,
// ByteLevel, Digits, Whitespace, WhitespaceSplit, Sequence), post-processors (ByteLevel, TemplateProcessing,
// BertProcessing, RobertaProcessing, Sequence) and the byte-level alphabet that ByteLevel and its decoder share.
// Semantics are those of the Python `tokenizers` library, its test oracle (tests/text/tokenizer_oracle.py).
//
//   auto norm = make_normalizer(json["normalizer"], "tokenizer.json");          // nullptr: identity
//   auto pre = make_pre_tokenizer(json["pre_tokenizer"], "tokenizer.json");
//   std::vector<std::string> pieces = pre->split({norm ? norm->apply(text) : text});
//
// Unicode: normalization and case mapping by utf8proc, regexes by PCRE2 (UTF + UCP, JIT); both from Debian.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsrl::text {

/// One code point from UTF-8 at `pos` (advanced past it). Invalid or truncated sequences decode as U+FFFD and
/// advance one byte, as a lossy decoder does.
char32_t next_code_point(std::string_view s, size_t& pos);
/// Appends the UTF-8 encoding of `cp`.
void append_utf8(std::string& out, char32_t cp);
/// Unicode White_Space (what `\s` and Rust's char::is_whitespace mean).
bool is_white_space(char32_t c);
/// `bytes` as valid UTF-8: every invalid sequence replaced by U+FFFD (as Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

/// GPT-2's bytes_to_unicode: every byte as one printable code point (DSV32_FORMAT.md §A.4).
class ByteAlphabet {
public:
    static const ByteAlphabet& get();
    /// The UTF-8 of the code point standing for byte `b`.
    const std::string& encode(uint8_t b) const { return to_char_[b]; }
    /// The bytes of a byte-level string; false when a code point is outside the alphabet.
    bool decode(std::string_view s, std::string& out) const;

private:
    ByteAlphabet();
    std::array<std::string, 256> to_char_;
    std::array<int16_t, 0x180> from_cp_;  // code point -> byte, -1 when not in the alphabet (all are < 0x180)
};

class Normalizer {
public:
    virtual ~Normalizer() = default;
    virtual std::string apply(const std::string& text) const = 0;
};

/// The normalizer of a tokenizer.json (`json` may be null: nullptr, the identity). An unsupported type or a
/// malformed field is a ConfigError naming `file` and the field.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& json, const std::string& file);

class PreTokenizer {
public:
    virtual ~PreTokenizer() = default;
    /// Splits each piece further (never merging pieces); empty pieces are dropped.
    virtual std::vector<std::string> split(std::vector<std::string> pieces) const = 0;
};

/// The pre-tokenizer of a tokenizer.json (null: the whole text is one piece). ConfigError naming `file` and
/// the field for an unsupported type, an invalid regex or a malformed field.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& json, const std::string& file);

/// A post-processor (tokenizers' PostProcessor::process_encodings): the id sequences of the inputs (one for a single
/// text) in, a list of sequences out; the encoding's ids are their concatenation. Special tokens are added only
/// with `add_special`; a template's $A / $B pieces apply either way, as in `tokenizers`.
class PostProcessor {
public:
    using Sequences = std::vector<std::vector<int64_t>>;
    virtual ~PostProcessor() = default;
    /// ConfigError when a TemplateProcessing is given a number of sequences its templates do not take (a
    /// Sequence whose earlier step returned several; `tokenizers` panics there).
    virtual Sequences process(Sequences seqs, bool add_special) const = 0;
    /// Whether process({ids}, false) is {ids} for any ids: true unless a template repeats or omits $A.
    virtual bool plain_identity() const = 0;
};

/// The post-processor of a tokenizer.json (null: nullptr, nothing is added): ByteLevel (ids unchanged),
/// TemplateProcessing (its structured "single" / "pair" pieces and "special_tokens" ids), BertProcessing,
/// RobertaProcessing, Sequence. ConfigError naming `file` and the field for an unsupported type, a malformed
/// field, a template piece naming a special token the map lacks, $B in the single template, or an id outside
/// [0, vocab_size).
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& json,
                                                   const std::string& file,
                                                   int64_t vocab_size);

/// A compiled PCRE2 pattern (UTF, UCP: Unicode \s \d \w and \p{..} classes), JIT-compiled where possible.
class Regex {
public:
    /// ConfigError naming `what` and the position of the error for an invalid pattern.
    Regex(const std::string& pattern, const std::string& what);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    /// Byte ranges [begin, end) of the successive non-overlapping matches in `text` (empty matches skipped).
    std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

private:
    void* code_ = nullptr;  // pcre2_code_8*
    std::string what_;
};

}  // namespace dsrl::text
