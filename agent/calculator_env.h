// The built-in calculator environment (issue 20's demo domain: questions whose answer needs a tool): one tool,
// `calculator(expression)`, that evaluates an arithmetic expression — integers and decimals, + - * / %, unary minus,
// parentheses; integer results exact up to 2^63, / exact when it divides and a decimal otherwise — and answers the
// value as text, or "error: ..." for an expression it cannot evaluate (the model's mistake, answered as the tool
// result). A task is {"question", "answer"} with an optional "expression" (what the solver computes); verify gives 1
// when the last assistant message contains the answer (contains_answer).
//
//   EnvRegistry reg; register_calculator_environment(reg);
//   auto env = reg.create("calculator", {});
//   Json conversation = calculator_solution({{"question", "What is 37 * 58?"}, {"answer", "2146"},
//                                            {"expression", "37 * 58"}}, /*thinking=*/true);
#pragma once

#include <string>

#include "agent/environment.h"

namespace dsrl::agent {

/// The value of `expression` as the tool answers it ("2146", "0.5", "error: division by zero").
std::string evaluate_expression(const std::string& expression);

/// Registers "calculator" in `reg` (register_builtin_environments calls it).
void register_calculator_environment(EnvRegistry& reg);

/// The cold-start demonstration of a task with an "expression": {"messages": [system (kColdStartPrompt), user
/// question, assistant calling calculator (with reasoning when `thinking`), the tool's result, assistant answering
/// "\boxed{value}"], "tools": [...]} — an SFT row (issue 20 item 6). DataError for a task without an expression.
Json calculator_solution(const Json& task, bool thinking);

/// The system message of calculator tasks and their demonstrations. DeepSeek-V3.2's cold start lets the model call
/// tools inside its reasoning and answer without one; this is dsrl's short wording of that system prompt (the report
/// gives the idea, not the text).
extern const char* const kColdStartPrompt;

}  // namespace dsrl::agent
