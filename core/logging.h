// A small logger: one line per message, prefixed with time, rank and level, written atomically to stderr.
//   DSRL_LOG(info) << "step " << step << " loss " << loss;
// Levels: debug < info < warn < error (DSRL_LOG_LEVEL, default info). By default only rank 0 logs below
// warn (DSRL_LOG_ALL_RANKS=1 lets every rank log). Thread-safe.
#pragma once

#include <sstream>
#include <string>

namespace dsrl::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

/// Called once the distributed runtime knows the rank; before that the prefix shows "rank ?".
void set_rank(int rank);
/// Overrides the level from DSRL_LOG_LEVEL.
void set_level(Level level);
/// Parses "debug" | "info" | "warn" | "error"; throws dsrl::ConfigError naming `what` otherwise.
Level parse_level(const std::string& text, const std::string& what);
/// True when a message at `level` would be written by this rank.
bool enabled(Level level);
/// Writes one complete line (the prefix is added here).
void write(Level level, const std::string& message);
/// "[2026-11-25 05:31:02.123] [rank 0] I " — exposed for tests.
std::string prefix(Level level);

class Line {
public:
    explicit Line(Level level) : level_(level) {}
    ~Line() { write(level_, stream_.str()); }
    Line(const Line&) = delete;
    Line& operator=(const Line&) = delete;
    template <class T>
    Line& operator<<(const T& value) {
        stream_ << value;
        return *this;
    }

private:
    Level level_;
    std::ostringstream stream_;
};

}  // namespace dsrl::log

#define DSRL_LOG_LEVEL_debug ::dsrl::log::Level::kDebug
#define DSRL_LOG_LEVEL_info ::dsrl::log::Level::kInfo
#define DSRL_LOG_LEVEL_warn ::dsrl::log::Level::kWarn
#define DSRL_LOG_LEVEL_error ::dsrl::log::Level::kError
/// DSRL_LOG(info) << ...; the stream expression is not evaluated when the level is disabled.
#define DSRL_LOG(level)                                  \
    if (!::dsrl::log::enabled(DSRL_LOG_LEVEL_##level)) { \
    } else                                               \
        ::dsrl::log::Line(DSRL_LOG_LEVEL_##level)
