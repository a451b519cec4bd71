#include "trainer/cli.h"

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"
#include "trainer/config.h"

namespace dsrl::trainer {
namespace {

using ::testing::HasSubstr;

TEST(CliTest, ParsesFlagsInBothForms) {
    const CliOptions opt = parse_cli({"--config", "a.yaml", "--set", "grpo.beta=1", "--set=run.seed=3", "--resume=auto",
                                      "--print-config", "--check", "--dump-rollouts", "/tmp/r"});
    EXPECT_EQ(opt.config_path, "a.yaml");
    EXPECT_EQ(opt.dump_rollouts, "/tmp/r");
    EXPECT_EQ(parse_cli({"--dump-rollouts=d"}).dump_rollouts, "d");
    EXPECT_THROW(parse_cli({"--dump-rollouts"}), ConfigError);
    EXPECT_EQ(opt.overrides, (std::vector<std::string>{"grpo.beta=1", "run.seed=3"}));
    EXPECT_EQ(opt.resume, "auto");
    EXPECT_TRUE(opt.print_config);
    EXPECT_TRUE(opt.check);
    EXPECT_FALSE(opt.help);
}

TEST(CliTest, UnknownFlagSuggestsNearest) {
    try {
        parse_cli({"--confg", "x"});
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_THAT(std::string(e.what()), HasSubstr("unknown argument '--confg'; did you mean --config?"));
    }
    EXPECT_THROW(parse_cli({"--config"}), ConfigError);
    EXPECT_THROW(parse_cli({"--resume="}), ConfigError);
}

// A flag where a value belongs is the value missing (`--resume --check` once ran the job with a checkpoint path
// "--check"); a second --config is refused instead of the last one winning silently.
TEST(CliTest, AMissingValueOrASecondConfigIsAnError) {
    const auto error_of = [](const std::vector<std::string>& args) {
        try {
            parse_cli(args);
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_THAT(error_of({"--resume", "--check"}), HasSubstr("--resume needs a value, got the option --check"));
    EXPECT_THAT(error_of({"--dump-rollouts", "--check"}), HasSubstr("--dump-rollouts needs a value"));
    EXPECT_THAT(error_of({"--config", "--set=a=1"}), HasSubstr("--config needs a value, got the option --set=a=1"));
    EXPECT_THAT(error_of({"--config", "a.yaml", "-c", "b.yaml"}),
                HasSubstr("--config given twice ('a.yaml' and 'b.yaml')"));
    EXPECT_EQ(error_of({"--set", "run.name=--check"}), "");  // a value may contain a flag's text after its key
    EXPECT_EQ(error_of({"--dump-rollouts", "-dir"}), "");    // or begin with a dash
}

TEST(CliTest, UsageDocumentsFlagsAndEnvironment) {
    const std::string text = usage();
    for (const char* s : {"--config", "--set", "--resume", "--print-config", "--print-schema", "--check",
                          "DSRL_LOG_LEVEL", "DSRL_DIST_TIMEOUT_S"}) {
        EXPECT_THAT(text, HasSubstr(s));
    }
}

// docs/configuration.md embeds the generated schema between markers; it must match the code.
TEST(ConfigDocsTest, DocsConfigMdMatchesTheSchema) {
    const std::string doc = dsrl::fs::read_file(dsrl::testing::source_dir() + "/docs/configuration.md");
    const std::string begin = "<!-- schema:begin -->\n";
    const std::string end = "<!-- schema:end -->";
    const size_t b = doc.find(begin);
    const size_t e = doc.find(end);
    ASSERT_NE(b, std::string::npos);
    ASSERT_NE(e, std::string::npos);
    const std::string table = doc.substr(b + begin.size(), e - b - begin.size());
    EXPECT_EQ(table, config::schema_markdown(config::schema_of<JobConfig>()))
        << "docs/configuration.md is out of date: regenerate with scripts/gen_config_docs.sh";
}

}  // namespace
}  // namespace dsrl::trainer
