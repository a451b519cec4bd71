// The built-in search environment (issue 20 item 5b, agent/search_env.h): BM25 ranks the relevant document first,
// open returns its text, bad tool calls are answered as tool results, verify checks the final answer, and a bad
// corpus is an error naming the file and line.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/search_env.h"
#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"

namespace dsrl::agent {
namespace {

using ::testing::HasSubstr;

std::string corpus(const testing::TempDir& tmp) {
    const std::string path = tmp.path() + "/docs.jsonl";
    fs::write_file_atomic(
        path,
        {R"({"id": "paris", "title": "Paris", "text": "Paris is the capital of France. The Eiffel Tower is in Paris."}
{"id": "rome", "title": "Rome", "text": "Rome is the capital of Italy, home of the Colosseum."}
{"id": "tower", "title": "Towers", "text": "A tower is a tall structure; towers of many kinds."}

{"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."}
)"});
    return path;
}

Json call(const std::string& id, const std::string& name, const std::string& args) {
    return {{"id", id}, {"name", name}, {"arguments", args}};
}

TEST(SearchEnvTest, Bm25RanksTheRelevantDocumentFirst) {
    testing::TempDir tmp;
    const auto index = SearchIndex::load(corpus(tmp));
    EXPECT_EQ(index->size(), 4u);
    const auto hits = index->search("capital of Italy", 3);
    ASSERT_FALSE(hits.empty());
    EXPECT_EQ(hits[0].id, "rome");
    EXPECT_EQ(index->search("Eiffel tower", 1).at(0).id, "paris") << "the rarer word weighs more";
    EXPECT_TRUE(index->search("zebra", 3).empty());
    EXPECT_EQ(search_words("Hello, World-42!"), (std::vector<std::string>{"hello", "world", "42"}));
}

TEST(SearchEnvTest, ToolsAndVerifyThroughTheGuard) {
    testing::TempDir tmp;
    EnvRegistry reg;
    register_builtin_environments(reg);
    GuardedEnvironment env(reg.create("search", {{"corpus", corpus(tmp)}, {"top_k", 2}}), "search", 5.0);
    const Json first = env.reset({{"question", "What is the capital of Italy?"}, {"answer", "Rome"}});
    EXPECT_EQ(first.at("tools").size(), 2u);
    const Json answer = env.step(Json::array(
        {call("a", "search", R"({"query": "capital Italy"})"), call("b", "open", R"({"id": "rome"})"),
         call("c", "open", R"({"id": "atlantis"})"), call("d", "fly", "{}"), call("e", "search", "{not json")}));
    const Json& r = answer.at("results");
    ASSERT_EQ(r.size(), 5u);
    EXPECT_THAT(r[0].at("content").get<std::string>(), HasSubstr("\"id\":\"rome\""));
    EXPECT_THAT(r[1].at("content").get<std::string>(), HasSubstr("home of the Colosseum"));
    EXPECT_EQ(r[2].at("content"), "error: no document 'atlantis'");
    EXPECT_THAT(r[3].at("content").get<std::string>(), HasSubstr("unknown tool 'fly'"));
    EXPECT_THAT(r[4].at("content").get<std::string>(), HasSubstr("not valid JSON"));
    EXPECT_EQ(r[1].at("tool_call_id"), "b");
    const Json right = {{"messages", Json::array({{{"role", "assistant"}, {"content", "It is   ROME."}}})}};
    const Json wrong = {{"messages", Json::array({{{"role", "assistant"}, {"content", "Paris"}}})}};
    EXPECT_EQ(env.verify(right).at("reward"), 1.0);
    EXPECT_EQ(env.verify(wrong).at("reward"), 0.0);
    EXPECT_THROW(reg.create("search", {{"corpus", corpus(tmp)}})->reset({{"question", 1}}), DataError)
        << "a task needs a string question and answer";
}

TEST(SearchEnvTest, BadCorporaAndParamsAreErrors) {
    testing::TempDir tmp;
    EnvRegistry reg;
    register_builtin_environments(reg);
    EXPECT_THROW(reg.create("search", Json::object()), ConfigError);
    EXPECT_THROW(reg.create("search", {{"corpus", tmp.path() + "/missing.jsonl"}}), ConfigError);
    fs::write_file_atomic(tmp.path() + "/bad.jsonl", {"{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": 3}\n"});
    try {
        SearchIndex::load(tmp.path() + "/bad.jsonl");
        ADD_FAILURE() << "a bad row was accepted";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr("bad.jsonl:2: a document needs string \"id\" and \"text\""));
    }
    fs::write_file_atomic(tmp.path() + "/dup.jsonl",
                          {"{\"id\": \"a\", \"text\": \"x\"}\n{\"id\": \"a\", \"text\": \"y\"}\n"});
    EXPECT_THROW(SearchIndex::load(tmp.path() + "/dup.jsonl"), DataError);
}

}  // namespace
}  // namespace dsrl::agent
