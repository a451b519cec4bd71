// dsrl errors (STYLE.md "Errors"): exceptions in three layers.
//  - tensor contracts at op entry: TORCH_CHECK (throws c10::Error);
//  - user input (config, data, checkpoint, plugin, distributed): dsrl::Error subclasses whose message names
//    the key/file/tensor/rank and the actual value, with a hint where one exists;
//  - our own invariants: DSRL_INTERNAL_ASSERT ("dsrl bug: ...").
// Libraries never end the process; only main() does (see core/main_guard.h).
#pragma once

#include <stdexcept>
#include <string>

#include <absl/strings/str_cat.h>

namespace dsrl {

/// Base of every error dsrl raises on bad user input. what() is the complete, user-facing message.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// A bad configuration: unknown key, wrong type, out-of-range value, missing required key, bad override.
class ConfigError : public Error {
    using Error::Error;
};
/// A bad data file (prompts, SFT pairs, rollout dumps).
class DataError : public Error {
    using Error::Error;
};
/// A bad or incompatible checkpoint (HF safetensors, optimizer state, resume metadata).
class CheckpointError : public Error {
    using Error::Error;
};
/// A reward plugin that cannot be loaded or registered (missing symbol, ABI mismatch).
class PluginError : public Error {
    using Error::Error;
};
/// A distributed-runtime failure: bootstrap, timeout of a collective, mismatched peers.
class DistError : public Error {
    using Error::Error;
};
/// An invariant of dsrl itself was broken: a bug in dsrl, never the user's fault.
class InternalError : public std::logic_error {
public:
    explicit InternalError(const std::string& message) : std::logic_error(message) {}
};

namespace detail {
[[noreturn]] void throw_internal(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace detail

}  // namespace dsrl

/// DSRL_INTERNAL_ASSERT(cond, parts...): throws dsrl::InternalError("dsrl bug: file:line: cond: parts").
#define DSRL_INTERNAL_ASSERT(cond, ...)                                                                         \
    do {                                                                                                        \
        if (!(cond)) [[unlikely]] {                                                                             \
            ::dsrl::detail::throw_internal(__FILE__, __LINE__, #cond, ::absl::StrCat(__VA_OPT__(__VA_ARGS__))); \
        }                                                                                                       \
    } while (0)
