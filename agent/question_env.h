// What the built-in environments share (agent/search_env.h, agent/code_env.h): a task {"question", "answer"}, the
// question as the user's message, each tool call answered as text — a call whose arguments are not a JSON object is
// answered as a tool result saying so, the model's mistake rather than the environment's — and verify by
// contains_answer on the last assistant message. A subclass gives its tools and answers one well-formed call.
#pragma once

#include <string>
#include <vector>

#include "agent/environment.h"

namespace dsrl::agent {

class QuestionEnvironment : public Environment {
public:
    Json reset(const Json& task) final;
    Json step(const Json& tool_calls) final;
    Json verify(const Json& trajectory) final;

protected:
    explicit QuestionEnvironment(std::string env_name) : env_name_(std::move(env_name)) {}
    /// The tools' JSON schemas (see tool_schema).
    virtual Json tools() const = 0;
    /// The text answering a call of `tool` whose arguments are the JSON object `args`.
    virtual std::string answer(const std::string& tool, const Json& args) const = 0;
    /// A system message put before the question ("" = none).
    virtual std::string system_prompt() const { return ""; }

private:
    std::string env_name_;
    std::string answer_;
};

/// An OpenAI-style function tool schema with an object of `properties`, `required` among them.
Json tool_schema(const std::string& name,
                 const std::string& description,
                 const Json& properties,
                 const std::vector<std::string>& required);

}  // namespace dsrl::agent
