// Prompt datasets (data/prompts.h): JSONL parsing and its file:line errors, the per-epoch shuffled sampler
// and exact resume, the synthetic tasks (answers re-derived from the prompt text), data-spec parsing.
#include "data/prompts.h"
#include "data/sft_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/test_util.h"

namespace dsrl::data {
namespace {

using ::dsrl::testing::TempDir;

// The message of the DataError/ConfigError thrown by `fn` ("" and a test failure when nothing is thrown).
template <class E, class F>
std::string error_of(F&& fn) {
    try {
        fn();
    } catch (const E& e) {
        return e.what();
    }
    ADD_FAILURE() << "expected an exception";
    return "";
}

std::vector<int64_t> ids_of(PromptSampler& s, int64_t n) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < n; ++i) ids.push_back(s.next().id);
    return ids;
}

std::shared_ptr<const PromptSource> numbered_source(const TempDir& dir, int64_t n) {
    std::string text;
    for (int64_t i = 0; i < n; ++i) text += "{\"prompt\": \"p" + std::to_string(i) + "\"}\n";
    return JsonlPromptSource::open(dir.write("n.jsonl", text), "d");
}

// ---------------------------------------------------------------------------------------------------------
// JSONL

TEST(PromptJsonlTest, ReadsFieldsMetaOverridesAndIds) {
    TempDir dir;
    const std::string path =
        dir.write("p.jsonl",
                  "\xEF\xBB\xBF{\"prompt\": \"What is 2+2?\", \"answer\": \"4\", \"source\": \"gsm\"}\n"
                  "\n"
                  "   \n"
                  "{\"prompt\": \"Write a haiku.\", \"rubric\": \"5-7-5\", \"domain\": \"poetry\","
                  " \"id\": 70, \"level\": 3, \"tags\": [\"a\", \"b\"], \"x\": null}\r\n"
                  "{\"prompt\": \"third\", \"answer\": null}");
    const auto src = JsonlPromptSource::open(path, "reasoning");
    ASSERT_EQ(src->size(), 3);
    EXPECT_EQ(src->name(), path);

    const PromptItem a = src->get(0);
    EXPECT_EQ(a.domain, "reasoning");  // (a UTF-8 byte-order mark before the first line is skipped)
    EXPECT_EQ(a.id, 0);
    EXPECT_EQ(a.prompt, "What is 2+2?");
    EXPECT_EQ(a.meta, (std::map<std::string, std::string>{{"answer", "4"}, {"source", "gsm"}}));

    const PromptItem b = src->get(1);
    EXPECT_EQ(b.domain, "poetry");  // the line's domain overrides the config's
    EXPECT_EQ(b.id, 70);
    EXPECT_EQ(b.prompt, "Write a haiku.");  // CRLF stripped
    EXPECT_EQ(b.meta, (std::map<std::string, std::string>{
                          {"rubric", "5-7-5"}, {"level", "3"}, {"tags", "[\"a\",\"b\"]"}, {"x", "null"}}));

    const PromptItem c = src->get(2);
    EXPECT_EQ(c.id, 2);           // index among non-blank lines, not the line number
    EXPECT_TRUE(c.meta.empty());  // a null answer is absent

    // Deterministic: the same index gives the same item.
    EXPECT_EQ(src->get(1).meta, b.meta);
    EXPECT_THROW(src->get(3), InternalError);
    EXPECT_THROW(src->get(-1), InternalError);
}

struct BadLine {
    const char* name;
    std::string text;    // the file
    int64_t line;        // the line the error must name
    const char* needle;  // and a part of the reason
};

TEST(PromptJsonlTest, EveryErrorNamesFileAndLine) {
    const std::vector<BadLine> cases = {
        {"invalid_json", "{\"prompt\": \"a\"}\n{\"prompt\": \"b\",}\n", 2, "invalid JSON: [json.exception.parse_error"},
        {"comment", "\n# a comment\n{\"prompt\": \"a\"}\n", 2,
         "invalid JSON: [json.exception.parse_error.101] parse error at column 1:"},
        {"not_object", "{\"prompt\": \"a\"}\n\n[\"prompt\", \"b\"]\n", 3, "expected a JSON object, but got array"},
        {"missing_prompt", "{\"answer\": \"4\"}\n", 1, "missing the required string 'prompt'"},
        {"prompt_and_messages", "{\"prompt\": \"a\", \"messages\": [{\"role\": \"user\", \"content\": \"b\"}]}\n", 1,
         "give either 'prompt' or 'messages', not both"},
        {"empty_messages", "{\"messages\": []}\n", 1, "expected 'messages' to be a non-empty list"},
        {"bad_message", "{\"messages\": [{\"content\": \"x\"}]}\n", 1, "messages[0]: expected {\"role\": string"},
        {"no_content", "{\"messages\": [{\"role\": \"user\"}]}\n", 1, "messages[0]: expected a string 'content'"},
        {"tool_first", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}\n", 1,
         "messages[0]: a tool result must follow an assistant message with tool_calls"},
        {"unknown_role", "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n", 1, "messages[0]: role 'bot'"},
        {"assistant_without_content",
         "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\"}, "
         "{\"role\": \"user\", \"content\": \"q\"}]}\n",
         1, "messages[1]: expected a string 'content', but got none"},
        {"tool_calls_not_a_list",
         "{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": {}}, {\"role\": \"user\", \"content\": \"q\"}]}\n",
         1, "messages[0]: 'tool_calls' must be a list"},
        {"tools_not_a_list", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": {}}\n", 1,
         "expected 'tools' to be a list"},
        {"ends_with_assistant",
         "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
         1, "must end with a user or developer message (or tool results)"},
        {"null_prompt", "{\"prompt\": null}\n", 1, "missing the required string 'prompt'"},
        {"number_prompt", "{\"prompt\": \"a\"}\n{\"prompt\": 12}\n", 2,
         "expected 'prompt' to be a string, but got number 12"},
        {"empty_prompt", "{\"prompt\": \"\"}\n", 1, "'prompt' is empty"},
        {"bool_answer", "{\"prompt\": \"a\", \"answer\": true}\n", 1,
         "expected 'answer' to be a string, but got boolean true"},
        {"object_rubric", "{\"prompt\": \"a\", \"rubric\": {}}\n", 1, "expected 'rubric' to be a string"},
        {"number_domain", "{\"prompt\": \"a\", \"domain\": 1}\n", 1, "expected 'domain' to be a string"},
        {"float_id", "{\"prompt\": \"a\", \"id\": 1.5}\n", 1,
         "expected 'id' to be a 64-bit integer, but got number 1.5"},
        {"string_id", "{\"prompt\": \"a\", \"id\": \"7\"}\n", 1,
         "expected 'id' to be a 64-bit integer, but got string"},
        {"huge_id", "{\"prompt\": \"a\", \"id\": 18446744073709551615}\n", 1, "64-bit integer"},
        {"duplicate_id", "{\"prompt\": \"a\", \"id\": 5}\n\n{\"prompt\": \"b\", \"id\": 5}\n", 3,
         "duplicate id 5 (first used at line 1)"},
        // A default id (the index among non-blank lines) collides with an explicit one.
        {"duplicate_default_id", "{\"prompt\": \"a\", \"id\": 1}\n{\"prompt\": \"b\"}\n", 2,
         "duplicate id 1 (first used at line 1)"},
    };
    for (const BadLine& c : cases) {
        SCOPED_TRACE(c.name);
        TempDir dir;
        const std::string path = dir.write("bad.jsonl", c.text);
        const std::string msg = error_of<DataError>([&] { JsonlPromptSource::open(path, "d"); });
        EXPECT_NE(msg.find(path + ":" + std::to_string(c.line) + ": "), std::string::npos) << msg;
        EXPECT_NE(msg.find(c.needle), std::string::npos) << msg;
    }
}

TEST(PromptJsonlTest, EmptyAndMissingFilesNameThePath) {
    TempDir dir;
    for (const char* text : {"", "\n  \n\n"}) {
        const std::string path = dir.write("empty.jsonl", text);
        const std::string msg = error_of<DataError>([&] { JsonlPromptSource::open(path, "d"); });
        EXPECT_NE(msg.find(path), std::string::npos) << msg;
        EXPECT_NE(msg.find("no prompts"), std::string::npos) << msg;
    }
    const std::string missing = dir.path() + "/missing.jsonl";
    const std::string msg = error_of<DataError>([&] { JsonlPromptSource::open(missing, "d"); });
    EXPECT_NE(msg.find(missing), std::string::npos) << msg;
    EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------------------
// Sampler

TEST(PromptSamplerTest, SameSeedSameOrderDifferentSeedsDiffer) {
    TempDir dir;
    const auto src = numbered_source(dir, 50);
    PromptSampler a(src, 7), b(src, 7), c(src, 8);
    const auto ids_a = ids_of(a, 120);
    EXPECT_EQ(ids_a, ids_of(b, 120));
    EXPECT_NE(ids_a, ids_of(c, 120));
}

TEST(PromptSamplerTest, EveryItemOncePerEpochInAFreshOrder) {
    TempDir dir;
    const int64_t n = 37;
    const auto src = numbered_source(dir, n);
    PromptSampler s(src, 1234);
    std::vector<std::vector<int64_t>> epochs;
    for (int64_t e = 0; e < 4; ++e) {
        EXPECT_EQ(s.epoch(), e);
        EXPECT_EQ(s.position(), 0);
        epochs.push_back(ids_of(s, n));
        EXPECT_EQ(std::set<int64_t>(epochs.back().begin(), epochs.back().end()).size(), static_cast<size_t>(n));
        EXPECT_EQ(*std::min_element(epochs.back().begin(), epochs.back().end()), 0);
        EXPECT_EQ(*std::max_element(epochs.back().begin(), epochs.back().end()), n - 1);
    }
    EXPECT_EQ(s.epoch(), 4);
    EXPECT_NE(epochs[0], epochs[1]);  // reshuffled each epoch
    std::vector<int64_t> identity(n);
    for (int64_t i = 0; i < n; ++i) identity[i] = i;
    EXPECT_NE(epochs[0], identity);  // actually shuffled
}

TEST(PromptSamplerTest, RestoreMidEpochContinuesIdentically) {
    TempDir dir;
    const auto src = numbered_source(dir, 23);
    PromptSampler original(src, 99);
    ids_of(original, 23 * 2 + 9);  // into epoch 2
    const SamplerState saved = original.state();
    EXPECT_EQ(saved, (SamplerState{2, 9}));
    const auto expected = ids_of(original, 60);

    PromptSampler resumed(src, 99);  // a fresh process: epoch 0
    resumed.restore(saved);
    EXPECT_EQ(resumed.state(), saved);
    EXPECT_EQ(ids_of(resumed, 60), expected);

    // Restoring an earlier cursor of a used sampler also replays exactly.
    original.restore(saved);
    EXPECT_EQ(ids_of(original, 60), expected);
}

TEST(PromptSamplerTest, RestoreRejectsCursorsOutsideTheSource) {
    TempDir dir;
    const auto src = numbered_source(dir, 5);
    PromptSampler s(src, 1);
    for (const SamplerState bad : {SamplerState{0, 5}, SamplerState{-1, 0}, SamplerState{0, -1}}) {
        const std::string msg = error_of<DataError>([&] { s.restore(bad); });
        EXPECT_NE(msg.find("position in [0, 5)"), std::string::npos) << msg;
    }
    EXPECT_EQ(s.state(), (SamplerState{0, 0}));  // unchanged by a rejected restore
}

TEST(PromptSamplerTest, InfiniteSourcesAreReadSequentially) {
    const auto src = make_prompt_source("synthetic:echo", "alignment", "");
    PromptSampler s(src, 5);
    for (int64_t i = 0; i < 10; ++i) {
        const PromptItem item = s.next();
        EXPECT_EQ(item.id, i);
        EXPECT_EQ(item.prompt, src->get(i).prompt);
    }
    EXPECT_EQ(s.state(), (SamplerState{0, 10}));
    PromptSampler resumed(src, 5);
    resumed.restore({0, 4});
    EXPECT_EQ(resumed.next().id, 4);
    EXPECT_THROW(resumed.restore({1, 0}), DataError);
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic tasks

TEST(PromptSyntheticTest, ArithmeticAnswersAreExactAndDeterministic) {
    const std::regex pattern(R"(What is (\d+) ([-+*]) (\d+)\? Put the final answer in \\boxed\{\}\.)");
    for (const int64_t digits : {1, 3, 9}) {
        const auto src = make_prompt_source("synthetic:arithmetic?digits=" + std::to_string(digits), "math", "");
        const auto again = make_prompt_source("synthetic:arithmetic?digits=" + std::to_string(digits), "math", "");
        EXPECT_EQ(src->size(), -1);
        std::set<char> ops_seen;
        for (int64_t i = 0; i < 300; ++i) {
            const PromptItem item = src->get(i);
            SCOPED_TRACE(item.prompt);
            EXPECT_EQ(item.domain, "math");
            EXPECT_EQ(item.id, i);
            std::smatch m;
            ASSERT_TRUE(std::regex_match(item.prompt, m, pattern));
            const int64_t a = std::stoll(m[1]);
            const int64_t b = std::stoll(m[3]);
            const char op = m[2].str()[0];
            ops_seen.insert(op);
            for (const int idx : {1, 3}) {
                const std::string operand = m[idx].str();
                EXPECT_EQ(static_cast<int64_t>(operand.size()), digits);  // exactly `digits` digits
            }
            const int64_t expected = op == '+' ? a + b : op == '-' ? a - b : a * b;
            EXPECT_EQ(item.meta.at("answer"), std::to_string(expected));
            const PromptItem twin = again->get(i);
            EXPECT_EQ(twin.prompt, item.prompt);
            EXPECT_EQ(twin.meta, item.meta);
        }
        EXPECT_EQ(ops_seen, (std::set<char>{'+', '-', '*'}));
    }
}

TEST(PromptSyntheticTest, OpsAndSeedSelectTheDataset) {
    const auto plus = make_prompt_source("synthetic:arithmetic?ops=+&digits=4", "d", "");
    for (int64_t i = 0; i < 50; ++i) EXPECT_NE(plus->get(i).prompt.find(" + "), std::string::npos);
    // Parameters are normalized (sorted, defaults spelled out, ops in canonical order).
    EXPECT_EQ(make_prompt_source("synthetic:arithmetic?ops=*-", "d", "")->name(),
              "synthetic:arithmetic?digits=2&ops=-*&seed=0");
    EXPECT_EQ(make_prompt_source("synthetic:echo", "d", "")->name(), "synthetic:echo?seed=0&words=4");

    const auto s0 = make_prompt_source("synthetic:echo?seed=0", "d", "");
    const auto s1 = make_prompt_source("synthetic:echo?seed=1", "d", "");
    int64_t differ = 0;
    for (int64_t i = 0; i < 20; ++i) differ += s0->get(i).prompt != s1->get(i).prompt;
    EXPECT_GE(differ, 15);
    // Consecutive indices are different problems.
    std::set<std::string> distinct;
    for (int64_t i = 0; i < 100; ++i) distinct.insert(s0->get(i).prompt);
    EXPECT_GE(distinct.size(), 95u);
}

TEST(PromptSyntheticTest, EchoAnswerIsTheWordSequence) {
    const auto src = make_prompt_source("synthetic:echo?words=6", "alignment", "");
    for (int64_t i = 0; i < 100; ++i) {
        const PromptItem item = src->get(i);
        const std::string prefix = "Repeat exactly: ";
        ASSERT_EQ(item.prompt.rfind(prefix, 0), 0u) << item.prompt;
        const std::string words = item.prompt.substr(prefix.size());
        EXPECT_EQ(item.meta.at("answer"), words);
        EXPECT_EQ(std::count(words.begin(), words.end(), ' '), 5) << words;
    }
}

TEST(PromptSyntheticTest, CountAnswerIsTheLetterCount) {
    const std::regex pattern(R"re(How many times does the letter '([a-z])' appear in "([a-z ]+)"\?)re"
                             R"re( Put the final answer in \\boxed\{\}\.)re");
    const auto src = make_prompt_source("synthetic:count?words=3&seed=11", "d", "");
    for (int64_t i = 0; i < 100; ++i) {
        const PromptItem item = src->get(i);
        std::smatch m;
        ASSERT_TRUE(std::regex_match(item.prompt, m, pattern)) << item.prompt;
        const std::string text = m[2];
        const int64_t n = std::count(text.begin(), text.end(), m[1].str()[0]);
        EXPECT_GE(n, 1);
        EXPECT_EQ(item.meta.at("answer"), std::to_string(n)) << item.prompt;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Data specs

TEST(PromptSpecTest, BadSyntheticSpecsAreConfigErrorsWithTheKnownNames) {
    struct Case {
        const char* spec;
        std::vector<const char*> needles;
    };
    const std::vector<Case> cases = {
        {"synthetic:arithmetc",
         {"unknown synthetic task 'arithmetc'", "arithmetic, count, echo", "did you mean 'arithmetic'"}},
        {"synthetic:", {"unknown synthetic task ''", "arithmetic, count, echo"}},
        {"synthetic:echo?digits=3", {"unknown parameter 'digits' of task echo", "known parameters: seed, words"}},
        {"synthetic:arithmetic?digit=3", {"unknown parameter 'digit'", "digits, ops, seed", "did you mean 'digits'"}},
        {"synthetic:arithmetic?digits", {"expected key=value", "digits, ops, seed"}},
        {"synthetic:arithmetic?", {"expected key=value"}},
        {"synthetic:arithmetic?digits=0", {"expected digits to be an integer in [1, 9], but got '0'"}},
        {"synthetic:arithmetic?digits=10", {"in [1, 9], but got '10'"}},
        {"synthetic:arithmetic?digits=two", {"but got 'two'"}},
        {"synthetic:arithmetic?digits=2&digits=3", {"'digits' is given twice"}},
        {"synthetic:arithmetic?ops=/", {"non-empty subset of \"+-*\", but got '/'"}},
        {"synthetic:arithmetic?ops=", {"non-empty subset"}},
        {"synthetic:arithmetic?ops=++", {"ops repeats '+'"}},
        {"synthetic:echo?words=0", {"words to be an integer in [1, 64]"}},
        {"synthetic:count?seed=-1", {"seed to be an integer"}},
        {"", {"empty data spec", "arithmetic, count, echo"}},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.spec);
        const std::string msg = error_of<ConfigError>([&] { make_prompt_source(c.spec, "d", ""); });
        if (*c.spec != '\0') {
            EXPECT_NE(msg.find(c.spec), std::string::npos) << msg;
        }
        for (const char* needle : c.needles) EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
}

TEST(PromptSpecTest, PathsResolveAgainstTheBaseDir) {
    TempDir dir;
    const std::string path = dir.write("data/p.jsonl", "{\"prompt\": \"hi\"}\n");
    const auto rel = make_prompt_source("data/p.jsonl", "d", dir.path());
    EXPECT_EQ(rel->name(), path);
    EXPECT_EQ(rel->get(0).prompt, "hi");
    EXPECT_EQ(rel->get(0).domain, "d");
    const auto abs = make_prompt_source(path, "d", "/nonexistent");
    EXPECT_EQ(abs->get(0).prompt, "hi");
    // A missing relative file names the resolved path.
    const std::string msg = error_of<DataError>([&] { make_prompt_source("nope.jsonl", "d", dir.path()); });
    EXPECT_NE(msg.find(dir.path() + "/nope.jsonl"), std::string::npos) << msg;
}

TEST(SftMixtureTest, DrawsByWeightDeterministicallyAndResumesFromCursors) {
    const std::vector<SftMixture::SourceSpec> specs = {
        {"prompts.sft.reasoning", 3.0, "synthetic:arithmetic?digits=1&ops=+", "reasoning"},
        {"prompts.sft.alignment", 1.0, "synthetic:echo?words=2", "alignment"}};
    SftMixture a(specs, 1234), b(specs, 1234);
    std::map<std::string, std::string> cursors;
    int reasoning = 0;
    for (int64_t step = 0; step < 50; ++step) {
        for (int64_t slot = 0; slot < 4; ++slot) {
            std::string spec_a, spec_b;
            const PromptItem x = a.next(step, slot, &spec_a), y = b.next(step, slot, &spec_b);
            EXPECT_EQ(x.prompt, y.prompt);  // the same job seed draws the same data
            EXPECT_EQ(spec_a, spec_b);
            reasoning += spec_a == specs[0].spec;
        }
        if (step == 24) a.save_cursors(cursors);
    }
    EXPECT_NEAR(reasoning / 200.0, 0.75, 0.08);
    ASSERT_EQ(cursors.size(), 2u);
    // A fresh mixture restored from the cursors of step 25 continues as the original did.
    SftMixture original(specs, 1234), resumed(specs, 1234);
    for (int64_t step = 0; step < 25; ++step) {
        for (int64_t slot = 0; slot < 4; ++slot) original.next(step, slot, nullptr);
    }
    resumed.restore_cursors(cursors);
    for (int64_t step = 25; step < 30; ++step) {
        for (int64_t slot = 0; slot < 4; ++slot) {
            EXPECT_EQ(original.next(step, slot, nullptr).prompt, resumed.next(step, slot, nullptr).prompt);
        }
    }
}

TEST(JsonlPromptSourceTest, RowsMayHoldChatMessages) {
    testing::TempDir dir;
    const std::string path = dir.write(
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": "
        "\"2+2?\"}], \"answer\": \"4\"}\n{\"prompt\": \"plain\"}\n");
    const auto src = JsonlPromptSource::open(path, "reasoning");
    const PromptItem a = src->get(0);
    EXPECT_EQ(a.prompt, "2+2?");  // what the rewards see
    ASSERT_EQ(a.messages.size(), 2u);
    EXPECT_EQ(a.messages[0].role, "system");
    EXPECT_EQ(a.meta.count("messages"), 0u);
    EXPECT_EQ(a.meta.at("answer"), "4");
    EXPECT_EQ(chat_of(a).size(), 2u);
    const std::vector<text::ChatMessage> plain = chat_of(src->get(1));
    ASSERT_EQ(plain.size(), 1u);
    EXPECT_EQ(plain[0].role, "user");
    EXPECT_EQ(plain[0].content, "plain");
}

// Tool-use conversations in the OpenAI layout: kept whole (key order included) for the chat formats; prompts may end
// with tool results; SFT rows may end with the assistant turns to learn, prompt rows may not.
TEST(JsonlPromptSourceTest, RowsMayHoldToolConversations) {
    testing::TempDir dir;
    const std::string row =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"weather?\"}, {\"role\": \"assistant\", "
        "\"reasoning_content\": \"look it up\", \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": "
        "\"get\", \"arguments\": {\"zone\": 1, \"city\": \"Paris\"}}}]}, {\"role\": \"tool\", \"content\": "
        "\"sunny\"}], "
        "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get\", \"parameters\": {}}}], \"id\": 3}\n";
    const auto src = JsonlPromptSource::open(dir.write("tools.jsonl", row), "agent");
    const PromptItem a = src->get(0);
    EXPECT_EQ(a.prompt, "weather?");
    ASSERT_EQ(a.messages.size(), 3u);
    EXPECT_EQ(a.messages[1].content, "");  // an assistant turn that only calls tools
    EXPECT_EQ(a.meta.count("tools"), 0u);
    const text::OrderedJson conv = conversation_of(a);
    ASSERT_TRUE(conv.contains("tools"));
    EXPECT_EQ(conv["tools"][0]["function"]["name"], "get");
    EXPECT_EQ(conv["messages"][1]["tool_calls"][0]["function"]["arguments"].dump(), "{\"zone\":1,\"city\":\"Paris\"}");
    EXPECT_EQ(conv["messages"][1]["reasoning_content"], "look it up");
    // A plain prompt row as a conversation.
    const std::string plain = dir.write("plain.jsonl", "{\"prompt\": \"hi\"}\n");
    EXPECT_EQ(conversation_of(JsonlPromptSource::open(plain, "d")->get(0)).dump(),
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");

    const std::string sft = dir.write(
        "sft.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
    EXPECT_EQ(JsonlPromptSource::open(sft, "d", Rows::kConversations)->get(0).messages.back().role, "assistant");
    EXPECT_NE(error_of<DataError>([&] { JsonlPromptSource::open(sft, "d"); }).find("must end with a user"),
              std::string::npos);
    EXPECT_EQ(make_prompt_source(sft, "d", "", Rows::kConversations)->size(), 1);
}

// The prompt ids of an item: apply_chat for the byte-level template; a conversation it cannot show is a DataError
// naming the source and the prompt.
TEST(JsonlPromptSourceTest, PromptIdsOfTheByteTemplate) {
    testing::TempDir dir;
    const text::ByteTokenizer tok(320);
    const auto src = JsonlPromptSource::open(
        dir.write("p.jsonl",
                  "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": "
                  "\"q\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": [{\"type\": "
                  "\"function\"}], \"id\": 9}\n"),
        "d");
    EXPECT_EQ(prompt_ids(tok, src->get(0), "p"), tok.apply_chat({{"system", "s"}, {"user", "q"}}, true));
    const std::string msg = error_of<DataError>([&] { prompt_ids(tok, src->get(1), "p.jsonl"); });
    EXPECT_NE(msg.find("p.jsonl: prompt 9"), std::string::npos) << msg;
}

// Every conversation of a file is checked against the tokenizer's chat format at start-up, naming file and item.
TEST(JsonlPromptSourceTest, CheckConversationsBeforeTraining) {
    testing::TempDir dir;
    const text::ByteTokenizer tok(320);
    const std::string good =
        dir.write("good.jsonl",
                  "{\"prompt\": \"p\", \"answer\": \"a\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, "
                  "{\"role\": \"assistant\", \"content\": \"a\"}]}\n");
    check_conversations(*JsonlPromptSource::open(good, "d", Rows::kConversations), tok, Rows::kConversations);
    const std::string tools =
        dir.write("tools.jsonl",
                  "{\"prompt\": \"p\"}\n{\"id\": 7, \"messages\": [{\"role\": \"developer\", \"content\": \"q\"}]}\n");
    std::string msg =
        error_of<DataError>([&] { check_conversations(*JsonlPromptSource::open(tools, "d"), tok, Rows::kPrompts); });
    EXPECT_NE(msg.find(tools + ": item 7: "), std::string::npos) << msg;
    EXPECT_NE(msg.find("role 'developer'"), std::string::npos) << msg;
    const std::string bare = dir.write("bare.jsonl", "{\"prompt\": \"p\", \"id\": 3}\n");
    msg = error_of<DataError>([&] {
        check_conversations(*JsonlPromptSource::open(bare, "d", Rows::kConversations), tok, Rows::kConversations);
    });
    EXPECT_NE(msg.find(bare + ": item 3: an SFT row needs 'response' or 'answer'"), std::string::npos) << msg;
    check_conversations(*make_prompt_source("synthetic:echo", "d", ""), tok, Rows::kConversations);  // skipped
}

}  // namespace
}  // namespace dsrl::data
