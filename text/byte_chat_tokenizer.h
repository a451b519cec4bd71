// The byte-level tokenizer with the deepseek_v32 chat format (SPEC §4; ../shared/DSV32_FORMAT.md §B): the tiny
// demo models' bytes and specials (ByteTokenizer, text/tokenizer.h) plus the format's fixed strings as added tokens,
// so that a tiny model on a few CPU cores can be trained in the real format — tools, DSML tool calls, tool results,
// reasoning — where a marker spelled in bytes would cost 7-29 tokens (the tools block head 1,133).
//
//   auto tok = make_tokenizer("", 320, {.format = "deepseek_v32", .thinking = true});   // this class
//   ChatIds c = render_conversation(*tok, conversation);          // BOS once, each marker one id
//   ChatOptions opt;
//   ParsedMessage m = tok->chat_format(&opt)->parse(tok->decode(response, /*keep_special=*/true), opt, false);
//
// Ids: 0..15 and the bytes (16 + b) as in ByteTokenizer, except that BOS (0) and EOS (1) are the format's
// <｜begin▁of▁sentence｜> and <｜end▁of▁sentence｜>; the markers of kMarkers from id 272 on (table below and in
// docs/text.md). Encoding matches the markers (BOS and EOS included) leftmost-longest anywhere in the text, as
// Hugging Face added tokens are matched, and every other byte is its byte id; so a marker inside user text is the
// marker's id, and a partial marker is bytes. Like DeepSeek's tokenizer.json, BOS/EOS (and pad, 0..15) are special
// and the markers are not: decode(ids) keeps the markers (the reasoning, the DSML calls and the answer a reward
// reads) and drops 0..15; decode(ids, true) keeps everything, so ChatFormat::parse and stream_parser read it.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/chat_format.h"
#include "text/tokenizer.h"

namespace dsrl::text {

class ByteChatTokenizer final : public Tokenizer {
public:
    static constexpr int64_t kBos = ByteTokenizer::kBos;  ///< <｜begin▁of▁sentence｜>
    static constexpr int64_t kEos = ByteTokenizer::kEos;  ///< <｜end▁of▁sentence｜>
    static constexpr int64_t kPad = ByteTokenizer::kPad;
    static constexpr int64_t kByteOffset = ByteTokenizer::kByteOffset;
    static constexpr int64_t kFirstMarker = ByteTokenizer::kMinVocab;  ///< 272
    /// The added tokens after the bytes: kMarkers[i] is id kFirstMarker + i. Fixed — a trained checkpoint's
    /// embeddings depend on it: new markers are appended, never inserted or reordered.
    static constexpr const char* kMarkers[] = {
        dsv32::kUser,                // 272 <｜User｜>
        dsv32::kAssistant,           // 273 <｜Assistant｜>
        dsv32::kThinkOpen,           // 274 <think>
        dsv32::kThinkClose,          // 275 </think>
        dsv32::kCallsTag,            // 276 <｜DSML｜function_calls>
        dsv32::kCallsClose,          // 277 </｜DSML｜function_calls>
        dsv32::kInvokeName,          // 278 <｜DSML｜invoke name="
        dsv32::kInvokeClose,         // 279 </｜DSML｜invoke>
        dsv32::kParamName,           // 280 <｜DSML｜parameter name="
        dsv32::kParamClose,          // 281 </｜DSML｜parameter>
        dsv32::kStringTrue,          // 282 " string="true">
        dsv32::kStringFalse,         // 283 " string="false">
        dsv32::kResultsOpen,         // 284 <function_results>
        dsv32::kResultsClose,        // 285 </function_results>
        dsv32::kResultOpen,          // 286 <result>
        dsv32::kResultClose,         // 287 </result>
        dsv32::kToolsHead,           // 288 the TOOLS_BLOCK text up to the schemas ("## Tools ... <functions>\n")
        dsv32::kFunctionsClose,      // 289 </functions>
        dsv32::kResponseFormatHead,  // 290 the RESPONSE_FORMAT_BLOCK text up to the schema
    };
    static constexpr int64_t kNumMarkers = static_cast<int64_t>(std::size(kMarkers));
    static constexpr int64_t kMinVocab = kFirstMarker + kNumMarkers;  ///< 291

    /// Renders with deepseek_v32 under ChatOptions{thinking, add_bos = true} (BOS comes from the rendered text, as
    /// for a tokenizer.json). ConfigError naming model.vocab_size and kMinVocab when vocab_size < kMinVocab.
    explicit ByteChatTokenizer(int64_t vocab_size, bool thinking = true);

    int64_t vocab_size() const override { return vocab_size_; }
    int64_t bos_id() const override { return kBos; }
    int64_t eos_id() const override { return kEos; }
    int64_t pad_id() const override { return kPad; }
    /// Markers (BOS and EOS included) leftmost-longest, bytes elsewhere; no BOS/EOS added.
    std::vector<int64_t> encode(const std::string& text) const override;
    /// Markers always as their text; ids 0..15 only with `keep_special` (BOS/EOS as the format's strings); ids at
    /// kMinVocab and above, which nothing encodes to, as "<unused_N>" so a sampled one stays visible.
    std::string decode(const std::vector<int64_t>& ids, bool keep_special = false) const override;
    /// A marker's (BOS's, EOS's) text; other ids as ByteTokenizer::token_string shows them.
    std::string token_string(int64_t id) const override;
    /// Ids 0..15 (BOS, EOS, pad and ByteTokenizer's other specials); the markers are text.
    bool is_special(int64_t id) const override;
    /// The messages rendered with deepseek_v32 (ending with <｜Assistant｜> and <think> or </think> after a user
    /// message whatever `add_generation_prompt` says, as HfTokenizer does) and encoded.
    std::vector<int64_t> apply_chat(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const override;
    const ChatFormat* chat_format(ChatOptions* options) const override;

    /// The id of a marker's exact text (kBos, kEos or kFirstMarker + i); -1 for any other text.
    static int64_t marker_id(std::string_view text);

private:
    int64_t vocab_size_;
    std::unique_ptr<ChatFormat> format_;
    ChatOptions options_;
};

}  // namespace dsrl::text
