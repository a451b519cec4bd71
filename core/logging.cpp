#include "core/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <absl/strings/ascii.h>
#include <absl/strings/str_format.h>

#include "core/env.h"
#include "core/error.h"

namespace dsrl::log {
namespace {

std::atomic<int> g_rank{-1};

Level level_from_env() { return parse_level(env::get_string("DSRL_LOG_LEVEL"), "environment variable DSRL_LOG_LEVEL"); }

std::atomic<int>& level_storage() {
    static std::atomic<int> level{static_cast<int>(level_from_env())};
    return level;
}

bool all_ranks() {
    static const bool value = env::get_bool("DSRL_LOG_ALL_RANKS");
    return value;
}

std::mutex& write_mutex() {
    static std::mutex m;
    return m;
}

char level_letter(Level level) {
    switch (level) {
        case Level::kDebug:
            return 'D';
        case Level::kInfo:
            return 'I';
        case Level::kWarn:
            return 'W';
        case Level::kError:
            return 'E';
    }
    return '?';
}

}  // namespace

void set_rank(int rank) { g_rank.store(rank); }
void set_level(Level level) { level_storage().store(static_cast<int>(level)); }

Level parse_level(const std::string& text, const std::string& what) {
    const std::string t = absl::AsciiStrToLower(text);
    if (t == "debug") return Level::kDebug;
    if (t == "info") return Level::kInfo;
    if (t == "warn" || t == "warning") return Level::kWarn;
    if (t == "error") return Level::kError;
    throw ConfigError(absl::StrCat(what, ": expected one of debug, info, warn, error, got '", text, "'"));
}

bool enabled(Level level) {
    if (static_cast<int>(level) < level_storage().load()) return false;
    const int rank = g_rank.load();
    return level >= Level::kWarn || rank <= 0 || all_ranks();
}

std::string prefix(Level level) {
    const auto now = std::chrono::system_clock::now();
    const std::time_t secs = std::chrono::system_clock::to_time_t(now);
    const int millis =
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
    std::tm tm{};
    localtime_r(&secs, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
    const int rank = g_rank.load();
    const std::string rank_text = rank < 0 ? std::string("?") : std::to_string(rank);
    return absl::StrFormat("[%s.%03d] [rank %s] %c ", stamp, millis, rank_text, level_letter(level));
}

void write(Level level, const std::string& message) {
    std::string line = prefix(level) + message;
    if (line.empty() || line.back() != '\n') line.push_back('\n');
    std::lock_guard<std::mutex> lock(write_mutex());
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

}  // namespace dsrl::log
