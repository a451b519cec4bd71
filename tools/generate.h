// dsrl_tool generate: sampling from a DeepSeek-V3.2-layout checkpoint with its tokenizer and chat format.
#pragma once

#include <string>
#include <vector>

namespace dsrl::tools {

/// `args` after "generate": --model DIR --input PROMPTS.jsonl --output OUT.jsonl [--set KEY=VALUE ...]
/// [--records FILE]. Returns the process exit status; ConfigError/DataError for bad arguments or inputs.
int generate_main(const std::vector<std::string>& args);

extern const char* const kGenerateHelp;

}  // namespace dsrl::tools
