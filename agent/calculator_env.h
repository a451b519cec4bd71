// The built-in calculator environment (issue 20's demo domain: questions whose answer needs a tool): one tool,
// `calculator(expression)`, that evaluates an arithmetic expression — integers and decimals, + - * / %, unary minus,
// parentheses; integer results exact up to 2^63, / exact when it divides and a decimal otherwise — and answers the
// value as text, or "error: ..." for an expression it cannot evaluate (the model's mistake, answered as the tool
// result). A task is {"question", "answer"} with an optional "expression" (what the solver computes); verify gives 1
// when the last assistant message contains the answer (contains_answer). params: {"system_prompt": true,
// "tool_schema": true} — false leaves the system message (kColdStartPrompt) or the tool's JSON schema out of reset and
// of the demonstrations: with a byte-level tokenizer the schema alone is ~190 tokens, so the tiny demo model (which
// learns the call from the demonstrations) goes without; the tool answers either way.
//
//   EnvRegistry reg; register_calculator_environment(reg);
//   auto env = reg.create("calculator", {});
//   Json conversation = calculator_solution({{"question", "What is 37 * 58?"}, {"answer", "2146"},
//                                            {"expression", "37 * 58"}});
#pragma once

#include <string>

#include "agent/environment.h"

namespace dsrl::agent {

/// The value of `expression` as the tool answers it ("2146", "0.5", "error: division by zero").
std::string evaluate_expression(const std::string& expression);

/// Registers "calculator" in `reg` (register_builtin_environments calls it).
void register_calculator_environment(EnvRegistry& reg);

/// The cold-start demonstration of a task with an "expression" (the environment's demonstrate): {"messages": [system
/// (kColdStartPrompt), user question, assistant calling calculator, the tool's result, assistant answering
/// "\\boxed{value}"], "tools": [...]}, both assistant turns with reasoning (rendered in thinking mode only) — an SFT
/// row (issue 20 item 6). DataError for a task without an expression.
Json calculator_solution(const Json& task);

/// The system message of calculator tasks and their demonstrations. DeepSeek-V3.2's cold start lets the model call
/// tools inside its reasoning and answer without one; this is dsrl's short wording of that system prompt (the report
/// gives the idea, not the text).
extern const char* const kColdStartPrompt;

}  // namespace dsrl::agent
