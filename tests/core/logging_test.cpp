#include "core/logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <string>

#include "core/env.h"
#include "core/error.h"
#include "core/main_guard.h"

namespace dsrl {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(LoggingTest, PrefixHasTimeRankAndLevel) {
    log::set_rank(3);
    EXPECT_THAT(log::prefix(log::Level::kWarn),
                MatchesRegex(R"(\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\.[0-9]{3}\] \[rank 3\] W )"));
    log::set_rank(-1);
    EXPECT_THAT(log::prefix(log::Level::kInfo), HasSubstr("[rank ?] I "));
}

TEST(LoggingTest, OnlyRankZeroLogsInfoByDefault) {
    log::set_level(log::Level::kInfo);
    log::set_rank(0);
    EXPECT_TRUE(log::enabled(log::Level::kInfo));
    EXPECT_FALSE(log::enabled(log::Level::kDebug));
    log::set_rank(1);
    EXPECT_FALSE(log::enabled(log::Level::kInfo));
    EXPECT_TRUE(log::enabled(log::Level::kWarn));
    log::set_rank(-1);
}

TEST(LoggingTest, WritesOneLinePerMessage) {
    log::set_rank(0);
    log::set_level(log::Level::kInfo);
    ::testing::internal::CaptureStderr();
    DSRL_LOG(info) << "step " << 3 << " of " << 10;
    DSRL_LOG(debug) << "hidden";
    const std::string out = ::testing::internal::GetCapturedStderr();
    EXPECT_THAT(out, MatchesRegex(R"(\[[-0-9: .]*\] \[rank 0\] I step 3 of 10)"
                                  "\n"));
    log::set_rank(-1);
}

TEST(LoggingTest, ParseLevelRejectsUnknown) {
    EXPECT_EQ(log::parse_level("WARN", "x"), log::Level::kWarn);
    try {
        log::parse_level("verbose", "run.log_level");
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_THAT(std::string(e.what()),
                    HasSubstr("run.log_level: expected one of debug, info, warn, error, got 'verbose'"));
    }
}

TEST(EnvTest, KnobsParseAndReportBadValues) {
    setenv("DSRL_DIST_TIMEOUT_S", "17", 1);
    EXPECT_EQ(env::get_int("DSRL_DIST_TIMEOUT_S"), 17);
    setenv("DSRL_DIST_TIMEOUT_S", "soon", 1);
    try {
        env::get_int("DSRL_DIST_TIMEOUT_S");
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_THAT(std::string(e.what()), HasSubstr("DSRL_DIST_TIMEOUT_S='soon' is not an integer"));
    }
    unsetenv("DSRL_DIST_TIMEOUT_S");
    EXPECT_THROW(env::get_string("DSRL_NOT_A_KNOB"), InternalError);
    for (const auto& k : env::all_knobs()) EXPECT_GT(std::string(k.doc).size(), 10u) << k.name;
}

TEST(ErrorTest, InternalAssertBlamesDsrl) {
    try {
        DSRL_INTERNAL_ASSERT(1 + 1 == 3, "arithmetic ", 42);
        FAIL();
    } catch (const InternalError& e) {
        EXPECT_THAT(std::string(e.what()), HasSubstr("dsrl bug: "));
        EXPECT_THAT(std::string(e.what()), HasSubstr("'1 + 1 == 3' failed: arithmetic 42"));
    }
}

// An allocation that fails escapes as std::bad_alloc, whose own text names nothing: the one line printed says it ran
// out of memory and which keys size a job's memory.
TEST(ErrorTest, OutOfMemoryNamesWhatSizesMemory) {
    testing::internal::CaptureStderr();
    const int rc = guarded_main([]() -> int { throw std::bad_alloc(); });
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 1);
    EXPECT_THAT(err, HasSubstr("] error: out of memory: an allocation of host memory failed (std::bad_alloc)"));
    EXPECT_THAT(err, HasSubstr("trainer.micro_batch_size"));
    EXPECT_THAT(err, HasSubstr("rollout.cache_blocks"));
}

}  // namespace
}  // namespace dsrl
