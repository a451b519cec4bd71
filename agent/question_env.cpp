#include "agent/question_env.h"

#include <absl/strings/str_cat.h>

namespace dsrl::agent {

Json QuestionEnvironment::reset(const Json& task) {
    if (!task.is_object() || !task.contains("question") || !task["question"].is_string() || !task.contains("answer") ||
        !task["answer"].is_string()) {
        throw DataError(absl::StrCat(env_name_, ": a task needs string \"question\" and \"answer\", got ",
                                     task.dump().substr(0, 200)));
    }
    answer_ = task["answer"].get<std::string>();
    Json messages = Json::array();
    if (const std::string system = system_prompt(); !system.empty()) {
        messages.push_back({{"role", "system"}, {"content", system}});
    }
    messages.push_back({{"role", "user"}, {"content", task["question"]}});
    return {{"messages", messages}, {"tools", tools()}};
}

Json QuestionEnvironment::step(const Json& tool_calls) {
    Json results = Json::array();
    for (const Json& call : tool_calls) {
        std::string content;
        Json args;
        try {
            const Json& a = call.contains("arguments") ? call["arguments"] : Json::object();
            args = a.is_string() ? Json::parse(a.get<std::string>()) : a;
            content = args.is_object() ? answer(call.value("name", std::string()), args)
                                       : "error: the arguments must be a JSON object";
        } catch (const Json::exception&) {
            content = "error: the arguments are not valid JSON";
        }
        results.push_back({{"tool_call_id", call.value("id", std::string())}, {"content", content}});
    }
    return {{"results", results}, {"done", false}};
}

Json QuestionEnvironment::verify(const Json& trajectory) {
    const bool right = contains_answer(final_answer(trajectory), answer_);
    return {{"reward", right ? 1.0 : 0.0}, {"details", {{"answer", answer_}, {"found", right}}}};
}

Json tool_schema(const std::string& name,
                 const std::string& description,
                 const Json& properties,
                 const std::vector<std::string>& required) {
    return {{"type", "function"},
            {"function",
             {{"name", name},
              {"description", description},
              {"parameters", {{"type", "object"}, {"properties", properties}, {"required", required}}}}}};
}

}  // namespace dsrl::agent
