// Environment knobs (NCCL's habit): every knob is one named, documented constant, read once per process.
// The list lives in core/env.cpp; `dsrl_train --help` prints it. Values that fail to parse are a
// ConfigError naming the variable and its value.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace dsrl::env {

struct Knob {
    const char* name;
    const char* default_value;
    const char* doc;
};

/// Every environment variable dsrl reads, with its default and meaning.
const std::vector<Knob>& all_knobs();

/// The raw value of a registered knob (its default when unset). Throws dsrl::InternalError for a name that
/// is not registered, so every knob stays documented.
std::string get_string(const char* name);
/// The knob parsed as an integer; throws dsrl::ConfigError naming the variable when it is not one.
int64_t get_int(const char* name);
/// The knob's value, one of `choices`; throws dsrl::ConfigError naming the variable and the choices otherwise.
std::string get_choice(const char* name, std::initializer_list<const char*> choices);
/// The knob parsed as a boolean (1/0, true/false, yes/no, on/off).
bool get_bool(const char* name);

}  // namespace dsrl::env
