// Tests of the built-in rule-based reward modules (rewards/builtins.h): the pure helpers, each module's true and
// false cases including adversarial responses, params errors, and registration.
#include "rewards/builtins.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace dsrl::rewards {
namespace {

using Meta = std::map<std::string, std::string>;
using ParamMap = std::map<std::string, std::string>;

std::unique_ptr<RewardModule> make(const std::string& name, const ParamMap& params = {}) {
    Registry reg;
    register_builtins(reg);
    return reg.create(name, Params(name, params));
}

RewardInput input(const std::string& response, const Meta& meta = {}, const std::string& prompt = "") {
    RewardInput in;
    in.domain = "test";
    in.prompt = prompt;
    in.response = response;
    in.meta = meta;
    return in;
}

RewardResult score1(RewardModule& m, const RewardInput& in) {
    std::vector<RewardResult> r = m.score({in});
    EXPECT_EQ(r.size(), 1u);
    return r.empty() ? RewardResult::failure("no result") : r[0];
}

// The value of an ok result; a failed one fails the test and reads as NaN.
double value_of(RewardModule& m, const RewardInput& in) {
    const RewardResult r = score1(m, in);
    EXPECT_TRUE(r.ok()) << "unexpected failure: " << r.error;
    return r.value;
}

// Expects `fn` to throw ConfigError whose message contains every one of `parts`.
template <typename Fn>
void expect_config_error(Fn fn, const std::vector<std::string>& parts) {
    try {
        fn();
        ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
        for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
}

// ---- Helpers ----------------------------------------------------------------------------------------------

TEST(BuiltinHelpersTest, StripReasoningKeepsTextAfterLastCloseTag) {
    EXPECT_EQ(strip_reasoning("<think>x=3</think> The answer is 4"), " The answer is 4");
    EXPECT_EQ(strip_reasoning("reasoning (template opened it)</think>final"), "final");
    EXPECT_EQ(strip_reasoning("<think>a</think>b</think>c"), "c");
    EXPECT_EQ(strip_reasoning("<think>never closed \\boxed{4}"), "");
    EXPECT_EQ(strip_reasoning("no tags"), "no tags");
}

TEST(MathAnswerExtractTest, LastBoxedWins) {
    EXPECT_EQ(extract_final_answer("\\boxed{3} wait, no: \\boxed{4}", true), "4");
    EXPECT_EQ(extract_final_answer("$\\boxed{\\frac{1}{2}}$", true), "\\frac{1}{2}");
    EXPECT_EQ(extract_final_answer("\\boxed{\\{1, 2\\}}", true), "\\{1, 2\\}");  // escaped braces
    EXPECT_EQ(extract_final_answer("\\boxed{\\boxed{7}}", true), "\\boxed{7}");  // nested: normalized later
    EXPECT_EQ(extract_final_answer("\\fbox{5}", true), "5");
    EXPECT_EQ(extract_final_answer("\\boxed 5$", true), "5");
    EXPECT_EQ(extract_final_answer("Answer: 3\n\\boxed{4}", true), "4");  // a box beats an Answer line
}

TEST(MathAnswerExtractTest, MalformedBoxesAreNoAnswer) {
    EXPECT_EQ(extract_final_answer("\\boxed{}", true), std::nullopt);
    EXPECT_EQ(extract_final_answer("\\boxed{  }", true), std::nullopt);
    EXPECT_EQ(extract_final_answer("\\boxed{4} then \\boxed{5", true), std::nullopt);  // cut-off last box
    EXPECT_EQ(extract_final_answer("\\boxed{{4}", true), std::nullopt);
    EXPECT_EQ(extract_final_answer("\\boxed", true), std::nullopt);
    EXPECT_EQ(extract_final_answer("}}}\\boxed}{", true), std::nullopt);
    EXPECT_EQ(extract_final_answer("\\boxedtext{4}", false), std::nullopt);  // another command
    EXPECT_EQ(extract_final_answer("", true), std::nullopt);
}

TEST(MathAnswerExtractTest, AnswerLineWhenAllowed) {
    EXPECT_EQ(extract_final_answer("so\nanswer: 12\nmore\n  ANSWER: 13 ", true), "13");
    EXPECT_EQ(extract_final_answer("**Answer:** 7", true), "7");
    EXPECT_EQ(extract_final_answer("Final answer: -2", true), "-2");
    EXPECT_EQ(extract_final_answer("Answer: 13", false), std::nullopt);
    EXPECT_EQ(extract_final_answer("The answer: 13", true), std::nullopt);  // must start the line
    EXPECT_EQ(extract_final_answer("Answer:", true), std::nullopt);
}

TEST(MathAnswerNormalizeTest, DropsPresentation) {
    EXPECT_EQ(normalize_answer(" $ 1\\,000 $ "), "1000");
    EXPECT_EQ(normalize_answer("5."), "5");
    EXPECT_EQ(normalize_answer("+3"), "3");
    EXPECT_EQ(normalize_answer("x = 5"), "5");
    EXPECT_EQ(normalize_answer("\\left( 1, 2 \\right)"), "(1,2)");
    EXPECT_EQ(normalize_answer("\\dfrac{1}{2}"), "\\frac{1}{2}");
    EXPECT_EQ(normalize_answer("30^\\circ"), "30");
    EXPECT_EQ(normalize_answer("30^{\\circ}"), "30");
    EXPECT_EQ(normalize_answer("50\\%"), "50");
    EXPECT_EQ(normalize_answer("12 \\text{ cm}"), "12");   // a unit after a number
    EXPECT_EQ(normalize_answer("\\text{(B)}"), "(B)");     // not a unit: unwrapped
    EXPECT_EQ(normalize_answer("\\text{cm} 12"), "cm12");  // not after a number
    EXPECT_EQ(normalize_answer("\\boxed{7}"), "7");
    EXPECT_EQ(normalize_answer("{{7}}"), "7");
    EXPECT_EQ(normalize_answer("\\leftarrow"), "\\leftarrow");  // \left is a whole command only
}

TEST(MathAnswerNormalizeTest, ParsesNumbers) {
    EXPECT_EQ(normalize_number("1,000")->digits, "1000");
    EXPECT_EQ(normalize_number("-1,234,567")->digits, "-1234567");
    EXPECT_EQ(normalize_number("-0")->digits, "0");
    EXPECT_EQ(normalize_number("007")->digits, "7");
    EXPECT_DOUBLE_EQ(normalize_number("\\frac{3}{4}")->value, 0.75);
    EXPECT_DOUBLE_EQ(normalize_number("-\\frac{3}{4}")->value, -0.75);
    EXPECT_DOUBLE_EQ(normalize_number("\\frac{-3}{4}")->value, -0.75);
    EXPECT_DOUBLE_EQ(normalize_number("\\frac34")->value, 0.75);
    EXPECT_DOUBLE_EQ(normalize_number("3/4")->value, 0.75);
    EXPECT_DOUBLE_EQ(normalize_number(".5")->value, 0.5);
    EXPECT_FALSE(normalize_number("1,2").has_value());  // a list, not a thousands grouping
    EXPECT_FALSE(normalize_number("1,00").has_value());
    EXPECT_FALSE(normalize_number("0,500").has_value());
    EXPECT_FALSE(normalize_number("1234,567").has_value());
    EXPECT_FALSE(normalize_number("1,000,00").has_value());
    EXPECT_FALSE(normalize_number("1/0").has_value());
    EXPECT_FALSE(normalize_number("\\frac{1}{0}").has_value());
    EXPECT_FALSE(normalize_number("2x").has_value());
    EXPECT_FALSE(normalize_number("1.").has_value());
    EXPECT_FALSE(normalize_number("-").has_value());
    EXPECT_FALSE(normalize_number("\\frac{\\sqrt{2}}{2}").has_value());
    EXPECT_FALSE(normalize_number("1/2/3").has_value());
}

TEST(MathAnswerEqualTest, EquivalentForms) {
    constexpr double kTol = 1e-6;
    EXPECT_TRUE(answers_equal("2/4", "1/2", kTol));
    EXPECT_TRUE(answers_equal("0.5", "\\frac{1}{2}", kTol));
    EXPECT_TRUE(answers_equal("\\dfrac12", "0.50", kTol));
    EXPECT_TRUE(answers_equal("1,000", "1000", kTol));
    EXPECT_TRUE(answers_equal("-0", "0", kTol));
    EXPECT_TRUE(answers_equal("-0.0", "0", kTol));
    EXPECT_TRUE(answers_equal("-\\frac{1}{3}", "-1/3", kTol));
    EXPECT_TRUE(answers_equal("$-7$.", "-7", kTol));
    EXPECT_TRUE(answers_equal("5.0", "5", kTol));
    EXPECT_TRUE(answers_equal("\\left(1,2\\right)", "(1, 2)", kTol));
    EXPECT_TRUE(answers_equal("\\frac{\\sqrt{3}}{2}", "\\tfrac{\\sqrt{3}}{2}", kTol));
    EXPECT_TRUE(answers_equal("123456789012345678901234567890", "123,456,789,012,345,678,901,234,567,890", kTol));
}

TEST(MathAnswerEqualTest, DifferentAnswers) {
    constexpr double kTol = 1e-6;
    EXPECT_FALSE(answers_equal("-7", "7", kTol));
    EXPECT_FALSE(answers_equal("1/3", "0.33", kTol));
    EXPECT_FALSE(answers_equal("1,2", "12", kTol));
    EXPECT_FALSE(answers_equal("1000001", "1000000", kTol));  // integers compare exactly, tol aside
    EXPECT_FALSE(answers_equal("123456789012345678901234567891", "123456789012345678901234567890", kTol));
    EXPECT_FALSE(answers_equal("2x", "2", kTol));
    EXPECT_FALSE(answers_equal("", "", kTol));
    EXPECT_FALSE(answers_equal("$ $", "0", kTol));
    EXPECT_TRUE(answers_equal("0.3333333", "1/3", kTol));
    EXPECT_FALSE(answers_equal("0.3333333", "1/3", 1e-9));
}

// ---- math_answer ------------------------------------------------------------------------------------------

TEST(MathAnswerTest, ScoresFinalAnswer) {
    auto m = make("math_answer");
    const Meta ref{{"answer", "\\frac{1}{2}"}};
    EXPECT_EQ(value_of(*m, input("<think>hmm</think>So \\boxed{0.5}.", ref)), 1.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{1/3} no wait \\boxed{2/4}", ref)), 1.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{2/4} no wait \\boxed{1/3}", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("Answer: 1/2", ref)), 1.0);
    EXPECT_EQ(value_of(*m, input("I do not know", ref)), 0.0);
    const RewardResult r = score1(*m, input("\\boxed{}", ref));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value, 0.0);
    EXPECT_EQ(r.components.at("answered"), 0.0);
    EXPECT_EQ(score1(*m, input("\\boxed{7}", ref)).components.at("answered"), 1.0);
}

TEST(MathAnswerTest, AnswerOnlyInReasoningDoesNotCount) {
    auto m = make("math_answer");
    const Meta ref{{"answer", "42"}};
    EXPECT_EQ(value_of(*m, input("<think>it is \\boxed{42}</think>I give up.", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("<think>Answer: 42</think>", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("it is \\boxed{42}</think>\\boxed{41}", ref)), 0.0);  // template-opened block
    EXPECT_EQ(value_of(*m, input("<think>\\boxed{42} ... (cut off)", ref)), 0.0);      // never closed
    EXPECT_EQ(value_of(*m, input("<think>\\boxed{41}</think>\\boxed{42}", ref)), 1.0);
}

TEST(MathAnswerTest, AdversarialForms) {
    auto m = make("math_answer");
    EXPECT_EQ(value_of(*m, input("\\boxed{1,000}", {{"answer", "1000"}})), 1.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{-0}", {{"answer", "0"}})), 1.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{-3}", {{"answer", "3"}})), 0.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{{3}", {{"answer", "3"}})), 0.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{3}}}}", {{"answer", "3"}})), 1.0);
    EXPECT_EQ(value_of(*m, input(std::string(100000, '{') + "\\boxed{3}", {{"answer", "3"}})), 1.0);
    EXPECT_EQ(value_of(*m, input("\\boxed{" + std::string(100000, '{'), {{"answer", "3"}})), 0.0);
    std::string deep;
    for (int i = 0; i < 10000; ++i) deep += "\\text{";
    deep += "3" + std::string(10000, '}');
    EXPECT_EQ(value_of(*m, input("\\boxed{" + deep + "}", {{"answer", "3"}})), 0.0);  // no crash; too deep
    // Linear-time parsing: these would take minutes if any scan restarted per group (Note [Untrusted responses]).
    std::string unbalanced = "Answer: ";
    for (int i = 0; i < 100000; ++i) unbalanced += "\\text{";
    EXPECT_EQ(value_of(*m, input(unbalanced, {{"answer", "3"}})), 0.0);
    const std::string wrapped = "Answer: " + std::string(100000, '{') + "3" + std::string(100000, '}');
    EXPECT_EQ(value_of(*m, input(wrapped, {{"answer", "3"}})), 1.0);  // wrapping braces are presentation
    std::string degrees = "Answer: 3";
    for (int i = 0; i < 100000; ++i) degrees += "^{}";
    EXPECT_EQ(value_of(*m, input(degrees, {{"answer", "3"}})), 1.0);
}

TEST(MathAnswerTest, ParamsChangeTheVerdict) {
    auto m = make("math_answer", {{"correct", "2"}, {"wrong", "-1"}, {"require_boxed", "true"}, {"tol", "0.01"}});
    const Meta ref{{"answer", "3.14159"}};
    EXPECT_EQ(value_of(*m, input("\\boxed{3.14}", ref)), 2.0);  // within 1 %
    EXPECT_EQ(value_of(*m, input("\\boxed{3}", ref)), -1.0);
    EXPECT_EQ(value_of(*m, input("Answer: 3.14159", ref)), -1.0);  // require_boxed: Answer lines do not count
}

TEST(MathAnswerTest, MissingReferenceIsAFailure) {
    auto m = make("math_answer");
    std::vector<RewardResult> r = m->score(
        {input("\\boxed{1}", {}), input("\\boxed{1}", {{"answer", "1"}}), input("\\boxed{1}", {{"answer", " $ "}})});
    ASSERT_EQ(r.size(), 3u);
    EXPECT_FALSE(r[0].ok());
    EXPECT_NE(r[0].error.find("meta[\"answer\"]"), std::string::npos) << r[0].error;
    EXPECT_TRUE(r[1].ok());
    EXPECT_EQ(r[1].value, 1.0);
    EXPECT_FALSE(r[2].ok());
}

TEST(MathAnswerTest, BadParamsAreConfigErrors) {
    expect_config_error([] { make("math_answer", {{"tolerance", "0.1"}}); }, {"math_answer", "tolerance"});
    expect_config_error([] { make("math_answer", {{"tol", "abc"}}); }, {"math_answer", "tol", "abc"});
    expect_config_error([] { make("math_answer", {{"tol", "-1"}}); }, {"math_answer", "tol", "-1"});
    expect_config_error([] { make("math_answer", {{"require_boxed", "yes"}}); }, {"require_boxed", "yes"});
}

// ---- exact_match ------------------------------------------------------------------------------------------

TEST(ExactMatchTest, DefaultsTrimStripAndCollapseWhitespace) {
    auto m = make("exact_match");
    const Meta ref{{"answer", "Paris  France"}};
    EXPECT_EQ(value_of(*m, input("  Paris\n France \n", ref)), 1.0);
    EXPECT_EQ(value_of(*m, input("<think>Lyon?</think>Paris France", ref)), 1.0);
    EXPECT_EQ(value_of(*m, input("paris france", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("Paris France.", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("<think>Paris France</think>", ref)), 0.0);
    EXPECT_EQ(value_of(*m, input("", {{"answer", ""}})), 1.0);
}

TEST(ExactMatchTest, ParamsAndMissingAnswer) {
    auto m = make("exact_match",
                  {{"case_sensitive", "false"}, {"normalize_whitespace", "false"}, {"strip_reasoning", "false"}});
    EXPECT_EQ(value_of(*m, input(" PARIS ", {{"answer", "paris"}})), 1.0);
    EXPECT_EQ(value_of(*m, input("a  b", {{"answer", "a b"}})), 0.0);
    EXPECT_EQ(value_of(*m, input("<think></think>x", {{"answer", "x"}})), 0.0);
    EXPECT_FALSE(score1(*m, input("x")).ok());
    expect_config_error([] { make("exact_match", {{"casesensitive", "false"}}); }, {"exact_match", "casesensitive"});
}

// ---- regex_match ------------------------------------------------------------------------------------------

TEST(RegexMatchTest, ParamPattern) {
    auto m = make("regex_match", {{"pattern", "^\\s*(yes|no)\\b"}});
    EXPECT_EQ(value_of(*m, input("  yes, because")), 1.0);
    EXPECT_EQ(value_of(*m, input("maybe yes")), 0.0);
    EXPECT_EQ(value_of(*m, input("<think>no</think>maybe")), 0.0);
    auto raw = make("regex_match", {{"pattern", "^<think>"}, {"strip_reasoning", "false"}});
    EXPECT_EQ(value_of(*raw, input("<think>a</think>b")), 1.0);
}

TEST(RegexMatchTest, MetaPattern) {
    auto m = make("regex_match");
    EXPECT_EQ(value_of(*m, input("id: 0042", {{"pattern", "\\d{4}"}})), 1.0);
    EXPECT_EQ(value_of(*m, input("id: 42", {{"pattern", "\\d{4}"}})), 0.0);
    const RewardResult none = score1(*m, input("x"));
    EXPECT_FALSE(none.ok());
    EXPECT_NE(none.error.find("pattern"), std::string::npos);
    const RewardResult bad = score1(*m, input("x", {{"pattern", "(unclosed"}}));
    EXPECT_FALSE(bad.ok());
    EXPECT_NE(bad.error.find("(unclosed"), std::string::npos) << bad.error;
}

TEST(RegexMatchTest, BadPatternIsAConfigErrorNamingTheModule) {
    expect_config_error([] { make("regex_match", {{"pattern", "a(b"}}); }, {"regex_match", "pattern", "a(b"});
    expect_config_error([] { make("regex_match", {{"pattern", "[z-a]"}}); }, {"regex_match"});
    expect_config_error([] { make("regex_match", {{"pattern", "(a)\\1"}}); }, {"back-references"});
    expect_config_error([] { make("regex_match", {{"pattern", "a"}, {"flags", "i"}}); }, {"flags"});
}

TEST(RegexMatchTest, LongAndPathologicalResponsesDoNotCrash) {
    // A backtracking matcher overflows the stack or runs for ages here (Note [Regex engine]).
    auto m = make("regex_match", {{"pattern", "a.*b"}});
    std::string long_text(1000000, 'a');
    long_text.push_back('b');
    EXPECT_EQ(value_of(*m, input(long_text)), 1.0);
    auto nested = make("regex_match", {{"pattern", "^(a+)+$"}});
    std::string backtrack(5000, 'a');
    backtrack.push_back('!');
    EXPECT_EQ(value_of(*nested, input(backtrack)), 0.0);
}

// ---- format -----------------------------------------------------------------------------------------------

TEST(FormatTest, OneReasoningBlockThenAnAnswer) {
    auto m = make("format");
    EXPECT_EQ(value_of(*m, input("<think>reasoning</think>\nThe answer is 4.")), 1.0);
    EXPECT_EQ(value_of(*m, input(" \n<think></think>4")), 1.0);
    EXPECT_EQ(value_of(*m, input("The answer is 4.")), 0.0);
    EXPECT_EQ(value_of(*m, input("Sure! <think>r</think>4")), 0.0);             // text before the block
    EXPECT_EQ(value_of(*m, input("<think>r</think>  \n ")), 0.0);               // no answer
    EXPECT_EQ(value_of(*m, input("<think>r</think>4<think>s</think>5")), 0.0);  // two blocks
    EXPECT_EQ(value_of(*m, input("<think>r<think>s</think>5")), 0.0);           // nested open
    EXPECT_EQ(value_of(*m, input("<think>r</think>4</think>")), 0.0);           // stray close
    EXPECT_EQ(value_of(*m, input("<think>never closed")), 0.0);
    EXPECT_EQ(value_of(*m, input("</think><think>4")), 0.0);
    EXPECT_EQ(value_of(*m, input("")), 0.0);
}

TEST(FormatTest, Params) {
    auto m = make("format", {{"open_tag", "<reasoning>"}, {"close_tag", "</reasoning>"}, {"require_answer", "false"}});
    EXPECT_EQ(value_of(*m, input("<reasoning>r</reasoning>")), 1.0);
    EXPECT_EQ(value_of(*m, input("<think>r</think>4")), 0.0);
    auto opened = make("format", {{"open_in_prompt", "true"}});
    EXPECT_EQ(value_of(*opened, input("reasoning</think>4")), 1.0);
    EXPECT_EQ(value_of(*opened, input("<think>reasoning</think>4")), 0.0);
    EXPECT_EQ(value_of(*opened, input("reasoning only")), 0.0);
    expect_config_error([] { make("format", {{"open_tag", ""}}); }, {"format", "open_tag"});
    expect_config_error([] { make("format", {{"open_tag", "<t>"}, {"close_tag", "<t>"}}); }, {"format", "close_tag"});
    expect_config_error([] { make("format", {{"tag", "x"}}); }, {"format", "tag"});
}

// ---- length_penalty ---------------------------------------------------------------------------------------

RewardInput with_tokens(int64_t n, const std::string& finish = "eos") {
    RewardInput in = input("r");
    in.response_tokens = n;
    in.finish_reason = finish;
    return in;
}

TEST(LengthPenaltyTest, Shapes) {
    auto lin = make("length_penalty", {{"target", "100"}});
    EXPECT_EQ(value_of(*lin, with_tokens(0)), 0.0);
    EXPECT_EQ(value_of(*lin, with_tokens(100)), 0.0);
    EXPECT_DOUBLE_EQ(value_of(*lin, with_tokens(150)), -0.5);
    EXPECT_DOUBLE_EQ(value_of(*lin, with_tokens(1000)), -1.0);  // clamped to -scale
    auto quad = make("length_penalty", {{"target", "100"}, {"shape", "quadratic"}, {"scale", "2"}});
    EXPECT_DOUBLE_EQ(value_of(*quad, with_tokens(150)), -0.5);  // 2 * 0.5^2
    EXPECT_DOUBLE_EQ(value_of(*quad, with_tokens(400)), -2.0);
    auto step = make("length_penalty", {{"target", "100"}, {"shape", "step"}, {"scale", "0.3"}});
    EXPECT_EQ(value_of(*step, with_tokens(100)), 0.0);
    EXPECT_DOUBLE_EQ(value_of(*step, with_tokens(101)), -0.3);
}

TEST(LengthPenaltyTest, LimitAndTruncation) {
    auto m = make("length_penalty", {{"target", "100"}, {"limit", "120"}, {"scale", "2"}, {"truncated", "0.5"}});
    EXPECT_DOUBLE_EQ(value_of(*m, with_tokens(120)), -0.4);
    EXPECT_DOUBLE_EQ(value_of(*m, with_tokens(121)), -2.0);
    EXPECT_DOUBLE_EQ(value_of(*m, with_tokens(50, "length")), -0.5);
    EXPECT_DOUBLE_EQ(value_of(*m, with_tokens(121, "length")), -2.5);
    auto plain = make("length_penalty", {{"target", "100"}});
    EXPECT_EQ(value_of(*plain, with_tokens(50, "length")), 0.0);  // truncated defaults to no extra penalty
    EXPECT_FALSE(score1(*plain, with_tokens(-1)).ok());
}

TEST(LengthPenaltyTest, BadParams) {
    expect_config_error([] { make("length_penalty"); }, {"length_penalty", "target", "required"});
    expect_config_error([] { make("length_penalty", {{"target", "0"}}); }, {"target"});
    expect_config_error([] { make("length_penalty", {{"target", "ten"}}); }, {"target", "ten"});
    expect_config_error([] { make("length_penalty", {{"target", "100"}, {"shape", "cubic"}}); }, {"shape", "cubic"});
    expect_config_error([] { make("length_penalty", {{"target", "100"}, {"limit", "50"}}); }, {"limit", "50"});
    expect_config_error([] { make("length_penalty", {{"target", "100"}, {"scale", "-1"}}); }, {"scale"});
    expect_config_error([] { make("length_penalty", {{"target", "100"}, {"truncated", "-1"}}); }, {"truncated"});
    expect_config_error([] { make("length_penalty", {{"target", "100"}, {"max", "3"}}); }, {"max"});
}

// ---- language_consistency ---------------------------------------------------------------------------------

TEST(LanguageConsistencyTest, ScriptsAndDecoding) {
    EXPECT_EQ(script_of(U'a'), Script::kLatin);
    EXPECT_EQ(script_of(U'é'), Script::kLatin);
    EXPECT_EQ(script_of(U'7'), Script::kNone);
    EXPECT_EQ(script_of(U'×'), Script::kNone);
    EXPECT_EQ(script_of(U'ж'), Script::kCyrillic);
    EXPECT_EQ(script_of(U'λ'), Script::kGreek);
    EXPECT_EQ(script_of(U'ب'), Script::kArabic);
    EXPECT_EQ(script_of(U'ש'), Script::kHebrew);
    EXPECT_EQ(script_of(U'中'), Script::kHan);
    EXPECT_EQ(script_of(U'の'), Script::kKana);
    EXPECT_EQ(script_of(U'カ'), Script::kKana);
    EXPECT_EQ(script_of(U'한'), Script::kHangul);
    EXPECT_EQ(script_of(U'क'), Script::kDevanagari);
    EXPECT_EQ(script_of(U'ก'), Script::kThai);
    EXPECT_EQ(script_of(U'😀'), Script::kNone);
    const ScriptCounts c = count_scripts("ab\xff\xc3(中\xe4\xb8\xad\xed\xa0\x80\xc0\xaf ж");
    EXPECT_EQ(c.count[static_cast<int>(Script::kLatin)], 2);  // invalid, truncated, surrogate, overlong skipped
    EXPECT_EQ(c.count[static_cast<int>(Script::kHan)], 2);
    EXPECT_EQ(c.count[static_cast<int>(Script::kCyrillic)], 1);
    EXPECT_EQ(c.letters(), 5);
}

TEST(LanguageConsistencyTest, ShareOfDominantScript) {
    auto m = make("language_consistency");
    const std::string en = "What is the capital of France?";
    const std::string zh = "法国的首都是哪里？";
    EXPECT_DOUBLE_EQ(value_of(*m, input("Paris is the capital.", {}, en)), 1.0);
    EXPECT_DOUBLE_EQ(value_of(*m, input("巴黎", {}, en)), 0.0);
    EXPECT_DOUBLE_EQ(value_of(*m, input("巴黎", {}, zh)), 1.0);
    EXPECT_DOUBLE_EQ(value_of(*m, input("巴黎 ab", {}, zh)), 0.5);
    EXPECT_DOUBLE_EQ(value_of(*m, input("Париж", {}, "Какая столица Франции?")), 1.0);
    EXPECT_DOUBLE_EQ(value_of(*m, input("<think>думаю</think>Paris", {}, en)), 1.0);  // reasoning stripped
    const RewardResult r = score1(*m, input("巴黎 ab", {}, zh));
    EXPECT_DOUBLE_EQ(r.components.at("share"), 0.5);
}

TEST(LanguageConsistencyTest, JapaneseMixesKanaAndKanji) {
    auto m = make("language_consistency");
    EXPECT_DOUBLE_EQ(value_of(*m, input("東京です", {}, "日本の首都はどこですか")), 1.0);
    EXPECT_DOUBLE_EQ(value_of(*m, input("とうきょう", {}, "日本国首都はどこ")), 1.0);  // Han-dominant, has kana
    EXPECT_DOUBLE_EQ(value_of(*m, input("とうきょう", {}, "首都在哪里")), 0.0);        // Chinese prompt: Han only
}

TEST(LanguageConsistencyTest, NoLettersAndThreshold) {
    auto m = make("language_consistency");
    EXPECT_EQ(value_of(*m, input("Paris", {}, "1 + 1 = ?")), 1.0);  // prompt without letters: no constraint
    EXPECT_EQ(value_of(*m, input("42 !!", {}, "How much?")), 0.0);  // response without letters: 0 (documented)
    EXPECT_EQ(value_of(*m, input("", {}, "How much?")), 0.0);
    EXPECT_EQ(value_of(*m, input("\xff\xfe\x80", {}, "How much?")), 0.0);
    auto t = make("language_consistency", {{"threshold", "0.8"}});
    EXPECT_EQ(value_of(*t, input("Paris 巴", {}, "Where?")), 1.0);     // 5/6 >= 0.8
    EXPECT_EQ(value_of(*t, input("Paris 巴黎", {}, "Where?")), 0.0);   // 5/7 < 0.8
    EXPECT_EQ(value_of(*t, input("Parisian 巴", {}, "Where?")), 1.0);  // 8/9 >= 0.8
    auto raw = make("language_consistency", {{"strip_reasoning", "false"}});
    EXPECT_DOUBLE_EQ(value_of(*raw, input("думаю</think>Paris", {}, "Where?")), 10.0 / 15.0);  // "think" counts
    expect_config_error([] { make("language_consistency", {{"threshold", "1.5"}}); }, {"threshold", "1.5"});
}

// ---- Registry and robustness ------------------------------------------------------------------------------

TEST(BuiltinRegistryTest, RegisterTwiceAndCreateEachName) {
    Registry reg;
    register_builtins(reg);
    EXPECT_NO_THROW(register_builtins(reg));
    const std::map<std::string, ParamMap> minimal = {
        {"math_answer", {}},
        {"exact_match", {}},
        {"regex_match", {}},
        {"format", {}},
        {"length_penalty", {{"target", "10"}}},
        {"language_consistency", {}},
    };
    EXPECT_EQ(reg.list().size(), minimal.size());
    for (const auto& [name, params] : minimal) {
        ASSERT_TRUE(reg.contains(name)) << name;
        EXPECT_NE(reg.create(name, Params(name, params)), nullptr) << name;
    }
}

TEST(BuiltinRegistryTest, RandomBytesNeverThrowAndYieldOneResultEach) {
    Registry reg;
    register_builtins(reg);
    std::vector<std::unique_ptr<RewardModule>> modules;
    modules.push_back(reg.create("math_answer", Params("math_answer", {})));
    modules.push_back(reg.create("exact_match", Params("exact_match", {})));
    modules.push_back(reg.create("regex_match", Params("regex_match", {{"pattern", "\\d+(\\.\\d+)?"}})));
    modules.push_back(reg.create("format", Params("format", {})));
    modules.push_back(reg.create("length_penalty", Params("length_penalty", {{"target", "10"}})));
    modules.push_back(reg.create("language_consistency", Params("language_consistency", {})));
    std::mt19937 rng(1234);
    const std::string alphabet = "\\{}$<>/think boxed frac Answer: 0123456789,.-+\n\xe4\xb8\xad\xff";
    std::vector<RewardInput> batch;
    for (int i = 0; i < 200; ++i) {
        std::string s;
        const int len = static_cast<int>(rng() % 300);
        for (int k = 0; k < len; ++k) {
            s.push_back(i % 2 ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()]);
        }
        RewardInput in = input(s, {{"answer", "12"}}, "prompt " + s.substr(0, s.size() / 3));
        in.response_tokens = len;
        batch.push_back(in);
    }
    for (auto& m : modules) {
        std::vector<RewardResult> r;
        ASSERT_NO_THROW(r = m->score(batch));
        ASSERT_EQ(r.size(), batch.size());
        for (const auto& x : r) EXPECT_TRUE(x.ok()) << x.error;
    }
}

}  // namespace
}  // namespace dsrl::rewards
