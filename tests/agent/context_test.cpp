// Context management (issue 20 item 4, agent/context.h) on scripted trajectories: tool rounds are found whole
// (an assistant tool-call message and its results), Discard-75% and Discard-all drop the oldest of them and keep
// system, user and answer messages in order, and the trigger is tokens > threshold × window.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/context.h"
#include "core/error.h"

namespace dsrl::agent {
namespace {

Json call_round(int i) {
    return Json::array(
        {{{"role", "assistant"},
          {"reasoning_content", "look it up"},
          {"tool_calls", Json::array({{{"id", "c" + std::to_string(i)}, {"name", "search"}, {"arguments", "{}"}}})}},
         {{"role", "tool"}, {"tool_call_id", "c" + std::to_string(i)}, {"content", "result " + std::to_string(i)}}});
}

// system, user, 4 tool rounds (round 2 with two results), an answer, a new user message, 1 more round.
Json trajectory() {
    Json m = Json::array({{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "q1"}}});
    for (int i = 0; i < 4; ++i) {
        for (const Json& x : call_round(i)) m.push_back(x);
        if (i == 2) m.push_back({{"role", "tool"}, {"tool_call_id", "c2"}, {"content", "second result"}});
    }
    m.push_back({{"role", "assistant"}, {"content", "answer 1"}});
    m.push_back({{"role", "user"}, {"content", "q2"}});
    for (const Json& x : call_round(4)) m.push_back(x);
    return m;
}

std::vector<std::string> contents(const Json& messages) {
    std::vector<std::string> out;
    for (const Json& m : messages) out.push_back(m.value("content", std::string("<calls>")));
    return out;
}

TEST(ContextTest, ToolRoundsAreTheCallMessageAndItsResults) {
    const std::vector<ToolRound> r = tool_rounds(trajectory());
    ASSERT_EQ(r.size(), 5u);
    EXPECT_EQ(r[0].first, 2u);
    EXPECT_EQ(r[0].last, 3u);
    EXPECT_EQ(r[2].last - r[2].first, 2u) << "two results";
    EXPECT_TRUE(tool_rounds(Json::array()).empty());
    EXPECT_THROW(tool_rounds(Json::array({{{"content", "no role"}}})), DataError);
}

TEST(ContextTest, DiscardStrategiesDropTheOldestRoundsAndKeepEverythingElse) {
    int64_t removed = 0;
    const Json d75 = discard_tool_rounds(trajectory(), 0.75, &removed);
    EXPECT_EQ(removed, 4) << "ceil(0.75 x 5)";
    EXPECT_EQ(contents(d75), (std::vector<std::string>{"be brief", "q1", "answer 1", "q2", "<calls>", "result 4"}));
    const Json all = discard_tool_rounds(trajectory(), 1.0, &removed);
    EXPECT_EQ(removed, 5);
    EXPECT_EQ(contents(all), (std::vector<std::string>{"be brief", "q1", "answer 1", "q2"}));
    EXPECT_EQ(discard_tool_rounds(trajectory(), 0.0, &removed), trajectory());
    EXPECT_EQ(removed, 0);
    EXPECT_THROW(discard_tool_rounds(trajectory(), 1.5), ConfigError);
}

TEST(ContextTest, TriggerIsAboveTheThresholdOfTheWindow) {
    EXPECT_FALSE(context_exceeded(800, 1000, 0.8));
    EXPECT_TRUE(context_exceeded(801, 1000, 0.8));
    EXPECT_FALSE(context_exceeded(5000, 0, 0.8)) << "no window, no trigger";
}

}  // namespace
}  // namespace dsrl::agent
