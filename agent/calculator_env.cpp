#include "agent/calculator_env.h"

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <cctype>
#include <cmath>
#include <stdexcept>

#include "agent/question_env.h"

namespace dsrl::agent {

const char* const kColdStartPrompt =
    "You may call tools while you think, up to 20 times; then give the final answer without a tool call.";

namespace {

// A number while evaluating: exact integers until an operation leaves them (overflow, an inexact division).
struct Value {
    bool exact = true;
    int64_t i = 0;
    double d = 0;
    double real() const { return exact ? static_cast<double>(i) : d; }
};

Value inexact(double d) { return {false, 0, d}; }

// a + sign · b.
Value add(const Value& a, const Value& b, int sign) {
    int64_t out = 0;
    const bool overflow = sign > 0 ? __builtin_add_overflow(a.i, b.i, &out) : __builtin_sub_overflow(a.i, b.i, &out);
    if (a.exact && b.exact && !overflow) return {true, out, 0};
    return inexact(a.real() + sign * b.real());
}

class Parser {
public:
    explicit Parser(const std::string& text) : s_(text) {}

    Value parse() {
        Value v = sum();
        skip();
        if (pos_ != s_.size()) fail(absl::StrCat("unexpected '", s_.substr(pos_, 1), "' at position ", pos_ + 1));
        return v;
    }

private:
    [[noreturn]] static void fail(const std::string& why) { throw std::runtime_error(why); }
    void skip() {
        while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    }
    bool eat(char c) {
        skip();
        if (pos_ < s_.size() && s_[pos_] == c) {
            ++pos_;
            return true;
        }
        return false;
    }
    Value sum() {
        Value v = product();
        while (true) {
            if (eat('+')) {
                v = add(v, product(), 1);
            } else if (eat('-')) {
                v = add(v, product(), -1);
            } else {
                return v;
            }
        }
    }
    Value product() {
        Value v = unary();
        while (true) {
            if (eat('*')) {
                const Value r = unary();
                int64_t out = 0;
                v = v.exact && r.exact && !__builtin_mul_overflow(v.i, r.i, &out) ? Value{true, out, 0}
                                                                                  : inexact(v.real() * r.real());
            } else if (eat('/')) {
                const Value r = unary();
                if (r.real() == 0) fail("division by zero");
                if (v.exact && r.exact && !(v.i == INT64_MIN && r.i == -1) && v.i % r.i == 0) {
                    v = {true, v.i / r.i, 0};
                } else {
                    v = inexact(v.real() / r.real());
                }
            } else if (eat('%')) {
                const Value r = unary();
                if (!v.exact || !r.exact) fail("% needs integers");
                if (r.i == 0) fail("division by zero");
                v = {true, r.i == -1 ? 0 : v.i % r.i, 0};
            } else {
                return v;
            }
        }
    }
    Value unary() {
        if (eat('-')) {
            const Value v = unary();
            return v.exact && v.i != INT64_MIN ? Value{true, -v.i, 0} : inexact(-v.real());
        }
        if (eat('+')) return unary();
        return atom();
    }
    Value atom() {
        if (eat('(')) {
            if (++depth_ > 64) fail("parentheses nested too deeply");
            const Value v = sum();
            --depth_;
            if (!eat(')')) fail("missing ')'");
            return v;
        }
        skip();
        const size_t start = pos_;
        while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.')) ++pos_;
        const std::string num = s_.substr(start, pos_ - start);
        if (num.empty()) {
            fail(pos_ < s_.size() ? absl::StrCat("unexpected '", s_.substr(pos_, 1), "' at position ", pos_ + 1)
                                  : std::string("the expression ends too early"));
        }
        if (num.find('.') == std::string::npos) {
            try {
                size_t used = 0;
                const long long v = std::stoll(num, &used);
                return {true, static_cast<int64_t>(v), 0};
            } catch (const std::out_of_range&) {
                return inexact(std::stod(num));
            }
        }
        if (num.find('.') != num.rfind('.') || num == ".") fail(absl::StrCat("malformed number '", num, "'"));
        return inexact(std::stod(num));
    }

    const std::string& s_;
    size_t pos_ = 0;
    int depth_ = 0;
};

std::string format_value(const Value& v) {
    if (v.exact) return std::to_string(v.i);
    if (!std::isfinite(v.d)) return "error: the result is not a finite number";
    if (v.d == std::floor(v.d) && std::fabs(v.d) < 1e15) return absl::StrFormat("%.0f", v.d);
    std::string s = absl::StrFormat("%.10g", v.d);
    return s;
}

// Short on purpose: a tiny model reads the schema in every prompt.
Json calculator_tool() {
    return tool_schema("calculator", "Evaluate arithmetic (+ - * / % and parentheses).",
                       {{"expression", {{"type", "string"}}}}, {"expression"});
}

class CalculatorEnvironment final : public QuestionEnvironment {
public:
    CalculatorEnvironment(bool system, bool schema)
        : QuestionEnvironment("calculator"), system_(system), schema_(schema) {}

protected:
    Json tools() const override { return schema_ ? Json::array({calculator_tool()}) : Json::array(); }
    std::string system_prompt() const override { return system_ ? kColdStartPrompt : ""; }

public:
    Json demonstrate(const Json& task) override {
        Json demo = calculator_solution(task);
        if (!system_) demo["messages"].erase(0);
        if (!schema_) demo.erase("tools");
        return demo;
    }

private:
    bool system_;
    bool schema_;

protected:
    std::string answer(const std::string& tool, const Json& args) const override {
        if (tool != "calculator") return absl::StrCat("error: unknown tool '", tool, "' (the tool is calculator)");
        const auto it = args.find("expression");
        if (it == args.end() || !it->is_string()) return "error: calculator needs a string 'expression'";
        return evaluate_expression(it->get<std::string>());
    }
};

}  // namespace

std::string evaluate_expression(const std::string& expression) {
    if (expression.size() > 1000) return "error: the expression is longer than 1000 characters";
    try {
        return format_value(Parser(expression).parse());
    } catch (const std::exception& e) {
        return absl::StrCat("error: ", e.what());
    }
}

void register_calculator_environment(EnvRegistry& reg) {
    reg.add(
        "calculator", "arithmetic questions with a calculator tool (the agent demo's domain)",
        [](const Json& params) {
            const auto flag = [&](const char* key) {
                const auto it = params.find(key);
                if (it != params.end() && !it->is_boolean()) {
                    throw ConfigError(absl::StrCat("calculator: params.", key, " must be true or false"));
                }
                return it == params.end() || it->get<bool>();
            };
            return std::make_unique<CalculatorEnvironment>(flag("system_prompt"), flag("tool_schema"));
        },
        std::vector<std::string>{"system_prompt", "tool_schema"});
}

Json calculator_solution(const Json& task) {
    if (!task.is_object() || !task.contains("question") || !task["question"].is_string() ||
        !task.contains("expression") || !task["expression"].is_string()) {
        throw DataError(
            absl::StrCat("calculator: a demonstration needs a task with string \"question\" and "
                         "\"expression\", got ",
                         task.dump().substr(0, 200)));
    }
    const std::string expr = task["expression"].get<std::string>();
    const std::string value = evaluate_expression(expr);
    Json call = {
        {"role", "assistant"},
        {"content", ""},
        {"tool_calls", Json::array({{{"id", "call_1_0"},
                                     {"type", "function"},
                                     {"function", {{"name", "calculator"}, {"arguments", {{"expression", expr}}}}}}})}};
    Json answer = {{"role", "assistant"}, {"content", absl::StrCat("\\boxed{", value, "}")}};
    call["reasoning_content"] = "I use the calculator.";  // shown in thinking mode only
    answer["reasoning_content"] = absl::StrCat("It says ", value, ".");
    return {{"messages", Json::array({{{"role", "system"}, {"content", kColdStartPrompt}},
                                      {{"role", "user"}, {"content", task["question"]}},
                                      call,
                                      {{"role", "tool"}, {"tool_call_id", "call_1_0"}, {"content", value}},
                                      answer})},
            {"tools", Json::array({calculator_tool()})}};
}

}  // namespace dsrl::agent
