// Reward plugins (issue 7): the example plugin registers and scores; a bad path, a missing symbol, a wrong ABI
// version and a failing registration are one clear error each. Plugins live in build/plugins/.
#include <gtest/gtest.h>

#include <unistd.h>

#include "core/error.h"
#include "rewards/plugin.h"
#include "tests/test_util.h"

namespace dsrl::rewards {
namespace {

std::string plugin_dir() {
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    std::string self(buf, n > 0 ? static_cast<size_t>(n) : 0);
    return self.substr(0, self.find_last_of('/')) + "/../plugins/";
}

void expect_plugin_error(const std::string& path, const std::vector<std::string>& expect) {
    Registry reg;
    register_builtins(reg);
    try {
        load_plugin(path, reg);
        ADD_FAILURE() << "loading " << path << " should fail";
    } catch (const PluginError& e) {
        for (const std::string& s : expect) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
}

TEST(RewardPluginTest, TheExamplePluginRegistersAndScores) {
    Registry reg;
    register_builtins(reg);
    const std::vector<std::string> added = load_plugin(plugin_dir() + "libdsrl_keyword_reward.so", reg);
    ASSERT_EQ(added, std::vector<std::string>{"keyword"});
    DomainReward d = DomainReward::create(
        reg, {{.module = "keyword", .params = {{"words", "hello,world"}}}, {.module = "exact_match", .weight = 0}}, 0);
    std::vector<RewardInput> in{{.response = "hello there world", .meta = {{"answer", "x"}}},
                                {.response = "hello", .meta = {{"answer", "x"}}}};
    const auto s = d.score(in);
    ASSERT_TRUE(s[0].ok()) << s[0].error;
    EXPECT_DOUBLE_EQ(s[0].value, 1.0);
    EXPECT_DOUBLE_EQ(s[1].value, 0.5);
    EXPECT_DOUBLE_EQ(s[0].components.at("keyword.found"), 2);
}

TEST(RewardPluginTest, BadPluginsAreOneClearErrorEach) {
    const std::string dir = plugin_dir();
    expect_plugin_error(dir + "nope.so", {"nope.so", "no such file"});
    testing::TempDir tmp;
    expect_plugin_error(tmp.write("fake.so", "not an ELF file"), {"fake.so", "cannot load it"});
    expect_plugin_error(dir + "libdsrl_test_plugin_no_register.so", {"missing symbol 'dsrl_register_rewards'"});
    expect_plugin_error(dir + "libdsrl_test_plugin_bad_abi.so", {"ABI version 42", "this dsrl has version 1"});
    expect_plugin_error(dir + "libdsrl_test_plugin_throws.so", {"registration failed", "math_answer"});
}

}  // namespace
}  // namespace dsrl::rewards
