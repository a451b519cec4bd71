// libFuzzer harness: model output through the deepseek_v32 chat format's parsers (text/chat_format.h): the strict
// parse (a DataError on any deviation), the lenient parse (never throws), and the stream parser fed the same text
// in pieces. The header promises that the stream parser's deltas and final message equal the lenient parse for any
// way of cutting the text: checked here. The first byte picks thinking mode and the piece size. Corpus:
// tests/fuzz/chat_output/. docs/fuzzing.md.
#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "text/chat_format.h"

namespace {

[[noreturn]] void mismatch(const char* what, const std::string& a, const std::string& b) {
    std::fprintf(stderr, "chat output: stream parser and lenient parse disagree on %s:\n%s\n%s\n", what, a.c_str(),
                 b.c_str());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    static const auto format = dsrl::text::make_chat_format("deepseek_v32");
    const dsrl::text::ChatOptions opt{.thinking = (data[0] & 1) != 0, .add_bos = true};
    const size_t piece = 1 + (data[0] >> 1) % 16;
    const std::string completion = dsrl::fuzz::bytes_of(data + 1, size - 1);

    dsrl::fuzz::run([&] { (void)format->parse(completion, opt, /*strict=*/true); });
    const dsrl::text::ParsedMessage lenient = format->parse(completion, opt, /*strict=*/false);

    const auto stream = format->stream_parser(opt);
    std::string reasoning, content;
    size_t num_calls = 0;
    auto take = [&](const dsrl::text::ChatStreamParser::Delta& d) {
        reasoning += d.reasoning_content;
        content += d.content;
        num_calls += d.tool_calls.size();
    };
    for (size_t i = 0; i < completion.size(); i += piece) {
        take(stream->feed(std::string_view(completion).substr(i, piece)));
    }
    take(stream->finish());
    const dsrl::text::ParsedMessage& streamed = stream->message();
    if (reasoning != lenient.reasoning_content) mismatch("reasoning", reasoning, lenient.reasoning_content);
    if (content != lenient.content) mismatch("content", content, lenient.content);
    if (num_calls != lenient.tool_calls.size()) mismatch("the number of tool calls", "", "");
    if (streamed.to_json() != lenient.to_json())
        mismatch("the message", streamed.to_json().dump(), lenient.to_json().dump());
    if (streamed.finished != lenient.finished) mismatch("finished", "", "");
    return 0;
}
